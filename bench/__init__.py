"""Benchmarks of the Buzzer processes (``buzzer bench ...``), installed with the ``bench``
extra. Not part of the product: nothing in the product packages imports this."""
