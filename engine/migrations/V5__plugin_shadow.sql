-- hookd schema 5: shadow runs of candidate plugin versions (engine/src/store/postgres/shadow.rs).
-- One report per plugin name (the latest candidate's), summed over every node: its summary
-- (plan, state, counters) as JSON, updated under the row's lock by each compared attempt, and
-- the first 50 differing cases. Deleting the plugin deletes its report.

CREATE TABLE plugin_shadows (
    tenant  text  NOT NULL,
    name    text  NOT NULL,
    summary jsonb NOT NULL,
    PRIMARY KEY (tenant, name),
    FOREIGN KEY (tenant, name) REFERENCES plugins (tenant, name) ON DELETE CASCADE
);

CREATE TABLE plugin_shadow_cases (
    tenant text    NOT NULL,
    name   text    NOT NULL,
    seq    integer NOT NULL,
    record jsonb   NOT NULL,
    PRIMARY KEY (tenant, name, seq),
    FOREIGN KEY (tenant, name) REFERENCES plugin_shadows (tenant, name) ON DELETE CASCADE
);
