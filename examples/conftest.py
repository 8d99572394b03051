"""``pytest examples`` runs the main-job suite (test_servers.py) under the repository's config.

realservers/ is a suite of its own, with its own pytest.ini (its conftest declares
``pytest_plugins``, which pytest allows only in a rootdir's conftest): run it as
``pytest examples/realservers``, which makes that directory the rootdir, so this file is not read.
"""

collect_ignore = ["realservers"]
