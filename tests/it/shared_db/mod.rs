//! Tests that need PostgreSQL whichever backend the suite runs on: the store shared by several
//! nodes (`store.rs`) and real `hookd` processes on one database (`nodes.rs`). They need
//! `HOOKD_TEST_POSTGRES_URL` (`scripts/test.sh` starts a server and sets it).

mod nodes;
mod store;
