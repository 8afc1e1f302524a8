"""One subpackage per method kind (``wsss/methods/<kind>/``).

This file imports nothing: every module of a kind runs it, so whatever it imported would enter that
kind's code digest. The registry of kinds, and the resolution of a config's instances, is
``wsss/method_kinds.py``.
"""
