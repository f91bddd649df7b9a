-- hookd schema 3: statistics per channel.
--
-- A channel's statistics scope is named '#' + the channel in the existing stats tables (no
-- channel holds '#'; '#' alone is the tenant's overflow scope). Channels are free-form, so a
-- tenant has at most a fixed number of channel scopes per day (store/stats.rs,
-- MAX_CHANNELS_PER_DAY): before opening one, ingest counts the day's channel scopes. This
-- index makes that count read only the tenant's channel scopes of that day, not every scope
-- of every day of the tenant.
CREATE INDEX stats_ingest_channel_scopes ON stats_ingest (tenant, day) WHERE scope LIKE '#_%';
