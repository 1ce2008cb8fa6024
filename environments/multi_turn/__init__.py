"""The multi_turn environment: a meeting-room booking with a user who reveals requirements turn by turn."""
