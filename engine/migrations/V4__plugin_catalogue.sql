-- hookd schema 4: the plugin catalogue (engine/src/store/postgres/plugins.rs). Tenants'
-- uploaded plugins, every stored version with its component bytes, and which version is
-- current: every node loads the current version and hears of changes by NOTIFY
-- (`plugin <node> <tenant> <name>`), with a periodic comparison of the heads as the safety net.

-- One row per plugin name: its current and candidate versions and the next version id.
CREATE TABLE plugins (
    tenant            text   NOT NULL,
    name              text   NOT NULL,
    current_version   bigint NOT NULL,
    candidate_version bigint,
    next_version      bigint NOT NULL,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- Stored versions (the newest 20 per name, plus the current, the candidate and pinned ones).
CREATE TABLE plugin_versions (
    tenant      text   NOT NULL,
    name        text   NOT NULL,
    id          bigint NOT NULL,
    sha256      text   NOT NULL,
    size        bigint NOT NULL,
    created_at  bigint NOT NULL,
    uploaded_by text   NOT NULL,
    bytes       bytea  NOT NULL,
    PRIMARY KEY (tenant, name, id),
    FOREIGN KEY (tenant, name) REFERENCES plugins (tenant, name) ON DELETE CASCADE
);
