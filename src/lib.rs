//! pgrealm
