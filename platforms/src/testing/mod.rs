//! Test doubles: local servers that answer as each platform documents.
