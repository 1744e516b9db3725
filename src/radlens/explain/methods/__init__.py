"""One short module per family of attribution methods; each exposes ``run_<method>(ctx) -> MethodResult``.

The modules are imported only when their method is used (captum and zennit are slow to import).
"""
