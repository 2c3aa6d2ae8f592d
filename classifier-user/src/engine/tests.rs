//! Engine unit tests: scripted event transcripts (see `crate::testkit`).
