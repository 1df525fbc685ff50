"""The trace pages' Jinja2 templates, as package data: ``bestofk.service.ui.templates``.

Nothing imports it; it makes the folder a package of its own, as setuptools wants a folder of
package data to be (a data folder inside ``bestofk.service.ui`` is an importable namespace
package that a later setuptools would leave out of the wheel).
"""
