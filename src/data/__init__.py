"""Offline demo data: real face photos shipped by pip packages and synthesised fakes.

See :mod:`src.data.make_demo` (the builder), :mod:`src.data.blend` (self-blended images and the
held-out manipulations) and :mod:`src.data.sources` (the photos).
"""
