"""A kit for tests, benchmarks and demos: random-weight stand-ins of the default models.

Shipped in the package so that scripts/make_test_models.py, the benchmarks and the tests use one
writer, through the production loading code. The product never imports it at run time; it only
reads the mark the stand-ins carry (`ucl_cli.encoders.standin_marks`).
"""
