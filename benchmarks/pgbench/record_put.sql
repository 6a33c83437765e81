-- One revstore record write with the counter strategy on PostgreSQL: the `_PUT`
-- data-modifying CTE of src/revstore/backends/postgresql.py, one statement sent in
-- autocommit (no BEGIN/COMMIT around it), as the engine sends it.
--
-- Variables (pass with -D): ns (namespace, unique per run), records (1 = hot, N =
-- spread over ids 1..N, which must exist), content (the canonical JSON text), bump
-- (1 = create a version), exp ('none' = no expected revision, i.e. NULL).
--
-- Differences from the driver's statement, all outside the measured work:
--   * the content hash is computed in SQL (p) so that each write has a new hash and
--     the no-op path (content_hash <> :hash) is never taken; revstore hashes in Python;
--   * :now is now() instead of a bound timestamptz parameter;
--   * author / summary are NULL literals (revstore binds NULL parameters);
--   * :exp is NULLIF(:exp, 'none') because a pgbench variable cannot hold NULL.
\set id random(1, :records)
WITH p AS (
    SELECT md5(random()::text) || md5(random()::text) AS hash
), head AS (
    UPDATE revstore_records
       SET revision = revision + 1,
           version = version + :bump,
           content = :content,
           content_hash = (SELECT hash FROM p),
           updated_at = now()
     WHERE namespace = :ns AND id = :id AND NOT deleted
       AND content_hash <> (SELECT hash FROM p)
       AND (CAST(NULLIF(:exp, 'none') AS bigint) IS NULL
            OR revision = CAST(NULLIF(:exp, 'none') AS bigint))
    RETURNING revision, version, created_at, content_hash
), snapshot AS (
    INSERT INTO revstore_versions
        (namespace, record_id, version, revision, content, content_hash,
         author, summary, created_at)
    SELECT :ns, :id, head.version, head.revision, :content, head.content_hash,
           NULL, NULL, now()
      FROM head
     WHERE :bump = 1
)
SELECT revision, version, created_at FROM head;
