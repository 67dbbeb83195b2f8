from kilntest.spawn import tmp_path, world  # noqa: F401  (fixtures)
