"""Pieces shared by the API and the workers: settings, job records, error codes, queue wiring.

Nothing here imports TensorFlow or Flask, so the web process stays light and the workers do not
pull in the web stack.
"""
