"""Prefect flows that wire the stages of :mod:`pipeline`. They hold no logic of their own."""
