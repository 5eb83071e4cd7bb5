//! The store's schema as an ordered list of migrations. `PRAGMA user_version` records how many have been applied;
//! opening a store applies the missing ones in one transaction each. Never edit a released migration: append one.

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        -- 'rl', 'evolve', 'eval'
        kind        TEXT NOT NULL,
        env         TEXT NOT NULL,
        scale       TEXT NOT NULL,
        seed        INTEGER NOT NULL,
        created_at  REAL NOT NULL,
        -- 'running', 'interrupted', 'done', 'failed' (migration 2 adds the error)
        status      TEXT NOT NULL
    );
    -- Every start or resume records the config it ran with.
    CREATE TABLE configs (
        id          INTEGER PRIMARY KEY,
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        created_at  REAL NOT NULL,
        text        TEXT NOT NULL
    );
    -- Version v exists once v updates are done; version 0 is the initial policy.
    CREATE TABLE policy_versions (
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        version     INTEGER NOT NULL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (run_id, version)
    );
    CREATE TABLE prompts (
        id          INTEGER PRIMARY KEY,
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        text        TEXT NOT NULL,
        -- u32 little-endian
        token_ids   BLOB NOT NULL,
        UNIQUE (run_id, token_ids)
    );
    CREATE TABLE groups (
        id              INTEGER PRIMARY KEY,
        run_id          INTEGER NOT NULL REFERENCES runs(id),
        -- Order of sampling within the run (0, 1, 2, ...); also seeds the group's sampling.
        seq             INTEGER NOT NULL,
        prompt_id       INTEGER NOT NULL REFERENCES prompts(id),
        policy_version  INTEGER NOT NULL,
        sampled_at      REAL NOT NULL,
        sample_seconds  REAL NOT NULL,
        -- Temperature of the distribution the ideas' behaviour log-probs come from (the learner scores at it).
        temperature     REAL NOT NULL DEFAULT 1.0,
        -- 'executing' (some ideas not done), 'complete', 'trained', 'dropped' (too stale), 'cancelled'
        status          TEXT NOT NULL,
        trained_step    INTEGER,
        staleness       INTEGER,
        UNIQUE (run_id, seq)
    );
    CREATE INDEX groups_by_status ON groups (run_id, status);
    CREATE INDEX groups_by_step ON groups (run_id, trained_step);
    CREATE TABLE ideas (
        id              INTEGER PRIMARY KEY,
        run_id          INTEGER NOT NULL REFERENCES runs(id),
        group_id        INTEGER NOT NULL REFERENCES groups(id),
        idx             INTEGER NOT NULL,
        -- Unique in the run (g000012-i3): names the work folder and the backend job.
        key             TEXT NOT NULL,
        text            TEXT NOT NULL,
        -- u32 little-endian
        token_ids       BLOB NOT NULL,
        -- f32 little-endian, one per token: log-probability under the policy that sampled it
        logprobs        BLOB NOT NULL,
        finish_reason   TEXT NOT NULL,
        seed            INTEGER NOT NULL,
        -- 'pending' (not yet launched), 'running', 'done', 'cancelled'
        status          TEXT NOT NULL,
        -- Launches so far (infrastructure failures are retried).
        attempts        INTEGER NOT NULL DEFAULT 0,
        backend         TEXT,
        job_id          TEXT,
        work_dir        TEXT,
        log_path        TEXT,
        created_at      REAL NOT NULL,
        submitted_at    REAL,
        finished_at     REAL,
        -- The execution's result once done: 'ok' or 'failed'.
        exec_status     TEXT,
        reward          REAL,
        cause           TEXT,
        message         TEXT,
        metrics         TEXT,
        exec_seconds    REAL,
        UNIQUE (run_id, key),
        UNIQUE (group_id, idx)
    );
    CREATE INDEX ideas_by_status ON ideas (run_id, status);
    -- Every launch of an idea and how it ended (an infrastructure failure leads to another attempt).
    CREATE TABLE attempts (
        idea_id         INTEGER NOT NULL REFERENCES ideas(id),
        attempt         INTEGER NOT NULL,
        backend         TEXT NOT NULL,
        job_id          TEXT,
        submitted_at    REAL NOT NULL,
        finished_at     REAL,
        -- NULL while running; 'result' (the idea's result was recorded), 'infrastructure', 'cancelled',
        -- 'orphaned' (the trainer died while it ran and it was launched again)
        outcome         TEXT,
        message         TEXT,
        PRIMARY KEY (idea_id, attempt)
    );
    CREATE TABLE checkpoints (
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        step        INTEGER NOT NULL,
        path        TEXT NOT NULL,
        score       REAL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    -- One row per policy update: the main numbers as columns (for queries), everything as JSON.
    CREATE TABLE steps (
        run_id              INTEGER NOT NULL REFERENCES runs(id),
        step                INTEGER NOT NULL,
        created_at          REAL NOT NULL,
        reward_mean         REAL,
        reward_max          REAL,
        execution_rate      REAL,
        sample_seconds      REAL,
        wait_seconds        REAL,
        update_seconds      REAL,
        slot_utilisation    REAL,
        learner_idle_frac   REAL,
        metrics             TEXT NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    "#,
    // 2: why a run failed (status 'failed'): the error that stopped it, as the user saw it.
    r#"
    ALTER TABLE runs ADD COLUMN error TEXT;
    "#,
    // 3: common random numbers and the execution cache. A group may carry one *reference* idea (the environment's
    // baseline recipe at the group's seed, not trained on); `recipe_key` names what an execution computes (env,
    // scale, environment config and canonical recipe; NULL when not cacheable) so that the same key at the same
    // seed is executed once; `cached_from` is the idea whose execution a cached result was copied from.
    r#"
    ALTER TABLE ideas ADD COLUMN reference INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ideas ADD COLUMN recipe_key TEXT;
    ALTER TABLE ideas ADD COLUMN cached_from INTEGER REFERENCES ideas(id);
    CREATE INDEX ideas_by_recipe ON ideas (recipe_key, seed);
    "#,
    // 4: what a result's idea changed (`ExecResult::changed`: the knobs, or the code units a diff touched), as a
    // JSON array of strings; NULL for results stored before.
    r#"
    ALTER TABLE ideas ADD COLUMN changed TEXT;
    "#,
];
