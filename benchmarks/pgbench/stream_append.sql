-- One revstore stream append with the counter strategy on PostgreSQL: the `_APPEND`
-- data-modifying CTE of src/revstore/backends/postgresql.py, one statement sent in
-- autocommit (no BEGIN/COMMIT around it), as the engine sends it.
--
-- Variables (pass with -D): ns (namespace, unique per run), streams (1 = hot, N =
-- spread over ids 1..N, which must exist), n (items per batch), bodies and hashes
-- (text[] literals with n elements: the canonical JSON of each item and its SHA-256),
-- exp ('none' = no expected sequence, i.e. NULL).
--
-- Differences from the driver's statement, all outside the measured work:
--   * :now is now() instead of a bound timestamptz parameter;
--   * :exp is NULLIF(:exp, 'none') because a pgbench variable cannot hold NULL.
\set id random(1, :streams)
WITH stream AS (
    UPDATE revstore_streams
       SET last_sequence = last_sequence + :n,
           item_count = item_count + :n,
           updated_at = now()
     WHERE namespace = :ns AND id = :id
       AND (CAST(NULLIF(:exp, 'none') AS bigint) IS NULL
            OR last_sequence = CAST(NULLIF(:exp, 'none') AS bigint))
    RETURNING last_sequence
)
INSERT INTO revstore_stream_items
    (namespace, stream_id, sequence, item_id, body, body_hash, created_at)
SELECT :ns, :id, stream.last_sequence - :n + b.ord, NULL, b.body, b.body_hash, now()
  FROM stream,
       unnest(CAST(:bodies AS text[]), CAST(:hashes AS text[]))
           WITH ORDINALITY AS b(body, body_hash, ord)
RETURNING sequence;
