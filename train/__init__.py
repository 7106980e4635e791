"""Checkout-only entry points `python -m train.main|infer|evaluate|ensemble` (not installed):
each runs the module of the same name in `jglow.train`."""
