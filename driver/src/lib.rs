//! The graph driver for unionfs (layer store, OCI import, layer stacking).
//!
//! Not built yet: this crate only reserves its place in the workspace. Its
//! contract is section 8 of DESIGN.md and issue #5; nothing here is exported.
