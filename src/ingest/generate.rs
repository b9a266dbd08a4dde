//! `stampede gen-purchases`: realistic NDJSON purchase files.
