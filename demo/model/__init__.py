"""The bundled demo model (weights, tokenizer, config) as package data: ``bestofk.demo_model``.

Nothing imports it; :mod:`bestofk.service.bundled_model` finds this folder through it, in a
checkout (the editable install maps it here) and in an installed wheel alike.
"""
