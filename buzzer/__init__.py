"""Buzzer: the console script and the local stack."""
