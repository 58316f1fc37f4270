"""The example suite of pytest-cem: causal-behaviour tests of real models (run by ``make demo``).

A package so that the example models load by name, e.g. ``arch="example_suite.nets:PlainSR"``.
"""
