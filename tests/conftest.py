r"""
`pytest --reverse` runs the tests of each file in the reverse of their written order (the files themselves keep
their order), so that a test that passes only because an earlier one left something behind (a model that
generated, a cache filled, a global setting) is found. CI runs the quick files this way a second time (`.ci/run`).
"""


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the tests of each file in reverse order, to find tests that depend on their order")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--reverse"):
        return
    by_file = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    items[:] = [item for tests in by_file.values() for item in reversed(tests)]
