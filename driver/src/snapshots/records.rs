//! containerd's snapshots as the store keeps them: `ROOT/snapshots.json`
//! maps every key containerd gave, byte for byte, to its kind, parent,
//! labels, times and the store layer that holds its files. The file is
//! rewritten whole (temporary file, fsync, rename) under the store's lock,
//! so every change to it is atomic.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::Error;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable (Prepare): an rw layer of its own on its parent's chain.
    Active,
    /// Read-only (View): its parent's chain, no layer of its own.
    View,
    /// A layer (Commit), which may be a parent.
    Committed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    /// The parent's key; empty for none.
    #[serde(default)]
    pub parent: String,
    /// The store layer with this snapshot's files (a view has none).
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub created: u64,
    pub updated: u64,
    /// A commit recorded before its layer directory was renamed to the
    /// chain id: the rename still to do (after a crash, at the next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_from: Option<String>,
}

impl Record {
    /// A snapshot made now.
    pub fn new(
        kind: Kind,
        parent: &str,
        layer: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Record {
        let now = now_nanos();
        Record {
            kind,
            parent: parent.to_string(),
            layer,
            labels,
            created: now,
            updated: now,
            moving_from: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Records {
    /// The number of the next active snapshot's layer (`snap-N`).
    #[serde(default)]
    pub next: u64,
    #[serde(default)]
    pub snapshots: BTreeMap<String, Record>,
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Records {
    pub fn load(store: &Store) -> Result<Records, Error> {
        Ok(store
            .read_json(&store.root.join("snapshots.json"))?
            .unwrap_or_default())
    }

    pub fn save(&self, store: &Store) -> Result<(), Error> {
        store.write_json(&store.root.join("snapshots.json"), self)
    }

    pub fn get(&self, key: &str) -> Result<&Record, Error> {
        self.snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(format!("snapshot {key} does not exist")))
    }

    /// A snapshot whose files are the layer `id`.
    pub fn user_of(&self, id: &str) -> Option<&str> {
        self.snapshots
            .iter()
            .find(|(_, r)| r.layer.as_deref() == Some(id))
            .map(|(k, _)| k.as_str())
    }

    /// A snapshot whose parent is `key`.
    pub fn child_of(&self, key: &str) -> Option<&str> {
        self.snapshots
            .iter()
            .find(|(_, r)| r.parent == key)
            .map(|(k, _)| k.as_str())
    }

    /// Finish the layer renames of commits a crash interrupted.
    pub fn finish_moves(&mut self, store: &Store) -> Result<(), Error> {
        let pending: Vec<String> = self
            .snapshots
            .iter()
            .filter(|(_, r)| r.moving_from.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            let rec = self.snapshots.get_mut(&key).expect("listed");
            let (Some(from), Some(to)) = (rec.moving_from.take(), rec.layer.clone()) else {
                continue;
            };
            move_layer(store, &from, &to)?;
        }
        self.save(store)
    }
}

/// The rename of a committed layer to its chain id, after the records
/// name `to`: its metadata, the directory, then the old metadata. Done
/// again after a crash, it finishes what is left.
pub fn move_layer(store: &Store, from: &str, to: &str) -> Result<(), Error> {
    // From the old metadata while it exists (a stale one for `to` left by
    // an older crash is replaced).
    if let Some(mut m) = store.meta(from)? {
        m.id = to.to_string();
        m.rw = false;
        store.save_meta(&m)?;
    }
    let (src, dst) = (store.layer_dir(from), store.layer_dir(to));
    if src.exists() && !dst.exists() {
        std::fs::rename(&src, &dst).map_err(|e| store.io("layers", e))?;
    }
    if store.meta(from)?.is_some() {
        store.remove_meta(from)?;
    }
    Ok(())
}
