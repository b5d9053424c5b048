from pgcluster import pg_url, postgres  # noqa: F401  (fixtures)


def test_cluster_runs(postgres, pg_url):  # noqa: F811
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
