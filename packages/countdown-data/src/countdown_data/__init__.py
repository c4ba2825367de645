"""Countdown puzzle generator and solver."""
