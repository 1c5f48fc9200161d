"""Push: live poll counts to viewers over websockets, fed by one shared Redis stream reader."""
