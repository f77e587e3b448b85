//! The snapshot operations on the store, one at a time under its lock.
//!
//! A committed snapshot is a read-only layer, named by its chain id when
//! containerd's name ends in one (`NS/N/sha256:HEX`, as an unpack commits),
//! so a layer the store holds already (from `unionfs-driver import` or
//! another namespace) is kept once. An active snapshot is an rw layer
//! `snap-N` on its parent's layer; a view is only its parent's chain.
//! Each change writes its layer first and the records last: a crash in
//! between leaves a layer no snapshot names, which Cleanup removes.

use std::collections::BTreeMap;
use std::path::Path;

use unionfs::fsat::{self, Dir};
use unionfs::whiteout::{INDEX_DIR, WORK_DIR};

use super::filter::parse_all;
#[cfg(test)]
use super::mounts::FUSE_TYPE;
use super::mounts::{self, Mount};
use super::records::{move_layer, now_nanos, Kind, Record, Records};
use crate::store::{remove_path, Store};
use crate::Error;

/// containerd's label of a layer's chain id on an unpack's Prepare: a
/// snapshotter that has it answers AlreadyExists and the unpack skips it.
pub const REF_LABEL: &str = "containerd.io/snapshot.ref";

/// What Usage answers: bytes on disk and inodes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

pub struct Snapshots<'a> {
    pub store: &'a Store,
    pub db: Records,
}

/// `sha256:` and 64 hex digits at the end of a committed snapshot's name.
fn chain_id_of(name: &str) -> Option<&str> {
    let last = name.rsplit('/').next()?;
    let hex = last.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(last)
}

impl<'a> Snapshots<'a> {
    pub fn open(store: &'a Store) -> Result<Snapshots<'a>, Error> {
        let mut db = Records::load(store)?;
        if db.snapshots.values().any(|r| r.moving_from.is_some()) {
            db.finish_moves(store)?;
        }
        Ok(Snapshots { store, db })
    }

    fn parent_layer(&self, parent: &str) -> Result<Option<String>, Error> {
        if parent.is_empty() {
            return Ok(None);
        }
        let p = self
            .db
            .get(parent)
            .map_err(|_| Error::NotFound(format!("parent snapshot {parent} does not exist")))?;
        if p.kind != Kind::Committed {
            return Err(Error::Invalid(format!(
                "parent snapshot {parent} is not committed"
            )));
        }
        Ok(p.layer.clone())
    }

    /// Prepare (`kind` Active) or View: the new snapshot's mounts.
    pub fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        if key.is_empty() {
            return Err(Error::Invalid("a snapshot key may not be empty".into()));
        }
        if self.db.snapshots.contains_key(key) {
            return Err(Error::Exists(format!("snapshot {key} exists")));
        }
        let parent_layer = self.parent_layer(parent)?;
        if let Some(target) = labels.get(REF_LABEL) {
            self.remote_ref(target, parent, &parent_layer, &labels)?;
        }
        let layer = match kind {
            Kind::Active => {
                // A driver user may have taken a name of this form.
                let mut id = format!("snap-{}", self.db.next);
                while self.store.meta(&id)?.is_some() || self.store.layer_dir(&id).exists() {
                    self.db.next += 1;
                    id = format!("snap-{}", self.db.next);
                }
                self.db.next += 1;
                self.store.new_layer(&id, parent_layer, true, true)?;
                Some(id)
            }
            _ => None,
        };
        let rec = Record::new(kind, parent, layer, labels);
        self.db.snapshots.insert(key.to_string(), rec);
        self.db.save(self.store)?;
        self.mounts(key)
    }

    /// The remote-snapshot protocol: if the store holds the layer `target`
    /// on this parent, a committed snapshot `target` names it (made now if
    /// need be) and the Prepare is answered AlreadyExists; containerd then
    /// finds it by its label and skips the layer's download and apply.
    fn remote_ref(
        &mut self,
        target: &str,
        parent: &str,
        parent_layer: &Option<String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let exists = || Error::Exists(format!("target snapshot {target} exists"));
        let have = self.db.snapshots.values().any(|r| {
            r.kind == Kind::Committed
                && r.parent == parent
                && r.labels.get(REF_LABEL).map(String::as_str) == Some(target)
        });
        if have {
            return Err(exists());
        }
        let held = chain_id_of(target).is_some()
            && !self.db.snapshots.contains_key(target)
            && self
                .store
                .meta(target)?
                .is_some_and(|m| !m.rw && &m.parent == parent_layer)
            && self.store.layer_dir(target).is_dir();
        if !held {
            return Ok(());
        }
        let rec = Record::new(
            Kind::Committed,
            parent,
            Some(target.to_string()),
            labels.clone(),
        );
        self.db.snapshots.insert(target.to_string(), rec);
        self.db.save(self.store)?;
        log::info!("snapshot {target}: the store holds the layer, the unpack skips it");
        Err(exists())
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        let rec = self.db.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::Busy(format!(
                "snapshot {key} is committed: only active snapshots and views have mounts"
            )));
        }
        let lowers = match self.parent_layer(&rec.parent)? {
            Some(p) => self
                .store
                .chain(&p)?
                .iter()
                .map(|m| self.store.layer_dir(&m.id))
                .collect(),
            None => Vec::new(),
        };
        let upper = rec.layer.as_ref().map(|l| self.store.layer_dir(l));
        mounts::of(self.store, upper.as_deref(), &lowers)
    }

    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let rec = self.db.get(key)?.clone();
        if rec.kind != Kind::Active {
            return Err(Error::Busy(format!(
                "snapshot {key} is a {}: only an active snapshot can be committed",
                rec.kind.name()
            )));
        }
        if self.db.snapshots.contains_key(name) {
            return Err(Error::Exists(format!("snapshot {name} exists")));
        }
        let own = rec
            .layer
            .clone()
            .ok_or_else(|| Error::Invalid(format!("snapshot {key} has no layer")))?;
        let dir = self.store.layer_dir(&own);
        // The daemons' work and index directories are no part of the layer.
        for d in [WORK_DIR, INDEX_DIR] {
            remove_path(&dir.join(d))?;
        }
        let mut meta = self.store.layer(&own)?;
        meta.rw = false;
        self.store.refresh_size(&mut meta)?;
        let mut layer = own.clone();
        let mut moving_from = None;
        let mut drop_own = false;
        if let Some(chain) = chain_id_of(name).filter(|c| *c != own) {
            let held = self.store.layer_dir(chain).is_dir();
            match self.store.meta(chain)? {
                Some(m) if held && !m.rw && m.parent == meta.parent => {
                    layer = chain.to_string();
                    drop_own = true;
                }
                Some(_) if held => {}
                // Named in the records first; move_layer writes its
                // metadata and moves the directory (again after a crash).
                _ => {
                    layer = chain.to_string();
                    moving_from = Some(own.clone());
                }
            }
        }
        self.db.snapshots.remove(key);
        let mut rec = Record::new(Kind::Committed, &rec.parent, Some(layer.clone()), labels);
        rec.moving_from = moving_from.clone();
        self.db.snapshots.insert(name.to_string(), rec);
        self.db.save(self.store)?;
        if let Some(from) = moving_from {
            move_layer(self.store, &from, &layer)?;
            if let Some(r) = self.db.snapshots.get_mut(name) {
                r.moving_from = None;
            }
            self.db.save(self.store)?;
        } else if drop_own {
            log::info!("snapshot {name}: the store holds layer {layer} already");
            self.release(&own)?;
        }
        Ok(())
    }

    pub fn remove(&mut self, key: &str) -> Result<(), Error> {
        let rec = self.db.get(key)?.clone();
        if let Some(child) = self.db.child_of(key) {
            return Err(Error::Busy(format!(
                "cannot remove snapshot {key}: snapshot {child} is its child"
            )));
        }
        self.db.snapshots.remove(key);
        self.db.save(self.store)?;
        if let Some(l) = rec.layer {
            self.release(&l)?;
        }
        Ok(())
    }

    /// Remove the layer `id` if the snapshotter made it and nothing uses it
    /// any more: no snapshot, and no image or layer of the driver's.
    fn release(&self, id: &str) -> Result<(), Error> {
        if self.db.user_of(id).is_some() {
            return Ok(());
        }
        let Some(meta) = self.store.meta(id)? else {
            return Ok(());
        };
        if !meta.snapshotter {
            return Ok(());
        }
        if let Some(why) = self.store.dependent(id)? {
            log::info!("{why}: it stays");
            return Ok(());
        }
        if self.store.mount_state(id)?.count > 0 {
            log::info!("layer {id} stays: unionfs-driver has it mounted");
            return Ok(());
        }
        // Metadata first: a crash after it leaves a directory the next start removes.
        self.store.remove_meta(id)?;
        // Aside first, so what a daemon that is still ending does there is no matter.
        let aside = self.store.temp_dir(&format!("removed-{}", self.db.next))?;
        let gone = std::fs::rename(self.store.layer_dir(id), &aside)
            .map_err(|e| self.store.io("layers", e))
            .and_then(|_| remove_path(&aside));
        if let Err(e) = gone {
            log::warn!("layer {id}: its files stay in tmp/ until the next start: {e}");
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<&Record, Error> {
        self.db.get(key)
    }

    /// Update: only labels change (`labels`, `labels.KEY`; no paths: all labels).
    pub fn update(
        &mut self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Record, Error> {
        let rec = self
            .db
            .snapshots
            .get_mut(key)
            .ok_or_else(|| Error::NotFound(format!("snapshot {key} does not exist")))?;
        let mut new = rec.labels.clone();
        if paths.is_empty() {
            new = labels;
        } else {
            for p in paths {
                if p == "labels" {
                    new = labels.clone();
                } else if let Some(l) = p.strip_prefix("labels.") {
                    match labels.get(l) {
                        Some(v) => new.insert(l.to_string(), v.clone()),
                        None => new.remove(l),
                    };
                } else {
                    return Err(Error::Invalid(format!(
                        "cannot update field {p} of snapshot {key}: only labels change"
                    )));
                }
            }
        }
        rec.labels = new;
        rec.updated = now_nanos();
        let out = rec.clone();
        self.db.save(self.store)?;
        Ok(out)
    }

    /// The snapshots the filters select (containerd's syntax; none: all).
    pub fn list(&self, filters: &[String]) -> Result<Vec<(String, Record)>, Error> {
        let filters = parse_all(filters)?;
        Ok(self
            .db
            .snapshots
            .iter()
            .filter(|(k, r)| {
                let field = |path: &[String]| -> Option<String> {
                    match path {
                        [f] if f == "name" => Some(k.to_string()),
                        [f] if f == "parent" => Some(r.parent.clone()),
                        [f] if f == "kind" => Some(r.kind.name().to_string()),
                        [f, l] if f == "labels" => r.labels.get(l).cloned(),
                        _ => None,
                    }
                };
                filters.is_empty() || filters.iter().any(|f| f.matches(&field))
            })
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect())
    }

    /// Disk use of the snapshot's own layer (a view has none).
    pub fn usage(&self, key: &str) -> Result<Usage, Error> {
        let rec = self.db.get(key)?;
        match &rec.layer {
            Some(l) => {
                disk_usage(&self.store.layer_dir(l)).map_err(|e| self.store.io("layers", e.into()))
            }
            None => Ok(Usage::default()),
        }
    }

    /// Cleanup: the layers the snapshotter made that no snapshot names
    /// (left by a crash between a layer and its record).
    pub fn cleanup(&self) -> Result<(), Error> {
        for m in self.store.layers()? {
            if m.snapshotter && self.db.user_of(&m.id).is_none() {
                self.release(&m.id)?;
            }
        }
        self.store.clear_tmp()
    }
}

/// Bytes in blocks and inodes below `dir` (each inode once), as du counts.
fn disk_usage(dir: &Path) -> Result<Usage, fsat::Errno> {
    fn walk(
        dir: &Dir,
        seen: &mut std::collections::HashSet<(u64, u64)>,
        top: bool,
        u: &mut Usage,
    ) -> Result<(), fsat::Errno> {
        for e in fsat::read_dir(dir)? {
            if top && unionfs::whiteout::is_daemon_dir(&e.name) {
                continue;
            }
            // A running container's files come and go meanwhile.
            let st = match fsat::stat_at(dir, &e.name) {
                Err(fsat::Errno::ENOENT) => continue,
                r => r?,
            };
            if seen.insert((st.st_dev, st.st_ino)) {
                u.inodes += 1;
                u.size += st.st_blocks as u64 * 512;
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                match fsat::open_dir(dir, Path::new(&e.name)) {
                    Ok(sub) => walk(&sub, seen, false, u)?,
                    Err(fsat::Errno::ENOENT | fsat::Errno::ENOTDIR) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
    let root = Dir::open_root(dir)?;
    let mut u = Usage::default();
    walk(&root, &mut std::collections::HashSet::new(), true, &mut u)?;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("store")).unwrap();
        (t, s)
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CHAIN: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn a_layer_the_store_holds_answers_already_exists_and_is_listed_by_its_ref() {
        let (_t, store) = store();
        // As `unionfs-driver import` leaves it: a read-only layer named by its chain id.
        store.new_layer(CHAIN, None, false, false).unwrap();
        let mut s = Snapshots::open(&store).unwrap();
        let ref_labels = labels(&[(REF_LABEL, CHAIN)]);
        let e = s.create(
            Kind::Active,
            "default/1/extract-1 x",
            "",
            ref_labels.clone(),
        );
        assert!(matches!(e, Err(Error::Exists(_))), "{e:?}");
        // containerd then looks it up as metadata/snapshot.go does.
        let f = format!(r#"labels."{REF_LABEL}"=={CHAIN},parent=="""#);
        let found = s.list(&[f]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, CHAIN);
        assert_eq!(found[0].1.kind, Kind::Committed);
        assert_eq!(found[0].1.layer.as_deref(), Some(CHAIN));
        // Asked again (another namespace), the same answer, nothing new.
        let e = s.create(Kind::Active, "other/2/extract-2 x", "", ref_labels);
        assert!(matches!(e, Err(Error::Exists(_))));
        assert_eq!(s.db.snapshots.len(), 1);
        assert_eq!(store.layers().unwrap().len(), 1, "no layer was made");
        // Removing the snapshot leaves the driver's layer.
        s.remove(CHAIN).unwrap();
        assert!(store.meta(CHAIN).unwrap().is_some());
    }

    #[test]
    fn a_ref_the_store_lacks_prepares_as_usual() {
        let (_t, store) = store();
        let mut s = Snapshots::open(&store).unwrap();
        let m = s
            .create(Kind::Active, "k", "", labels(&[(REF_LABEL, CHAIN)]))
            .unwrap();
        assert_eq!(m[0].kind, "bind");
        assert_eq!(s.stat("k").unwrap().labels[REF_LABEL], CHAIN);
    }

    #[test]
    fn a_commit_named_by_a_chain_id_renames_its_layer_and_a_crash_midway_is_finished() {
        let (t, store) = store();
        let mut s = Snapshots::open(&store).unwrap();
        s.create(Kind::Active, "default/1/extract", "", BTreeMap::new())
            .unwrap();
        std::fs::write(store.layer_dir("snap-0").join("f"), "data").unwrap();
        let name = format!("default/2/{CHAIN}");
        s.commit(&name, "default/1/extract", BTreeMap::new())
            .unwrap();
        assert_eq!(s.stat(&name).unwrap().layer.as_deref(), Some(CHAIN));
        assert_eq!(
            std::fs::read_to_string(store.layer_dir(CHAIN).join("f")).unwrap(),
            "data"
        );
        assert!(store.meta("snap-0").unwrap().is_none());
        assert!(!store.meta(CHAIN).unwrap().unwrap().rw);

        // A crash after the records named the new layer, before the rename.
        let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        s.create(Kind::Active, "default/3/extract", &name, BTreeMap::new())
            .unwrap();
        let mut meta = store.layer("snap-1").unwrap();
        meta.id = other.into();
        store.save_meta(&meta).unwrap();
        let mut rec = s.db.snapshots.remove("default/3/extract").unwrap();
        rec.kind = Kind::Committed;
        rec.layer = Some(other.into());
        rec.moving_from = Some("snap-1".into());
        s.db.snapshots.insert("default/4/x".into(), rec);
        s.db.save(&store).unwrap();
        drop(s);
        drop(store);
        let store = Store::open(&t.path().join("store")).unwrap();
        let s = Snapshots::open(&store).unwrap();
        assert!(store.layer_dir(other).is_dir());
        assert!(store.meta("snap-1").unwrap().is_none());
        assert_eq!(s.stat("default/4/x").unwrap().moving_from, None);
        assert_eq!(Records::load(&store).unwrap(), s.db);
    }

    #[test]
    fn cleanup_removes_layers_no_snapshot_names_and_keeps_the_drivers() {
        let (_t, store) = store();
        store.new_layer("snap-9", None, true, true).unwrap();
        store.new_layer("mine", None, false, false).unwrap();
        let s = Snapshots::open(&store).unwrap();
        s.cleanup().unwrap();
        let ids: Vec<String> = store.layers().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["mine"]);
        assert!(!store.layer_dir("snap-9").exists());
    }

    #[test]
    fn metadata_without_a_directory_is_no_layer_and_taken_names_are_skipped() {
        let (_t, store) = store();
        // Left by a crash: a chain id's metadata, no directory.
        let mut m = {
            store.new_layer("x", None, false, true).unwrap();
            store.layer("x").unwrap()
        };
        std::fs::remove_dir(store.layer_dir("x")).unwrap();
        store.remove_meta("x").unwrap();
        m.id = CHAIN.into();
        store.save_meta(&m).unwrap();
        // A driver user's layer named as the snapshotter names its own.
        store.new_layer("snap-0", None, true, false).unwrap();
        let mut s = Snapshots::open(&store).unwrap();
        let r = s.create(Kind::Active, "k", "", labels(&[(REF_LABEL, CHAIN)]));
        assert!(r.is_ok(), "a layer with no files was taken as held: {r:?}");
        assert_eq!(s.stat("k").unwrap().layer.as_deref(), Some("snap-1"));
        std::fs::write(store.layer_dir("snap-1").join("f"), "data").unwrap();
        s.commit(&format!("default/2/{CHAIN}"), "k", BTreeMap::new())
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(store.layer_dir(CHAIN).join("f")).unwrap(),
            "data"
        );
        assert!(
            store.meta("snap-0").unwrap().is_some(),
            "the driver's layer is untouched"
        );
    }

    #[test]
    fn a_layer_the_driver_has_mounted_stays_when_its_snapshot_goes() {
        let (_t, store) = store();
        let mut s = Snapshots::open(&store).unwrap();
        s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
        s.commit("c", "a", BTreeMap::new()).unwrap();
        store
            .save_mount_state("snap-0", &crate::store::MountState { count: 1 })
            .unwrap();
        s.remove("c").unwrap();
        assert!(store.layer_dir("snap-0").is_dir());
    }

    #[test]
    fn usage_counts_the_snapshots_own_blocks_and_inodes() {
        let (_t, store) = store();
        let mut s = Snapshots::open(&store).unwrap();
        s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
        assert_eq!(s.usage("a").unwrap(), Usage::default());
        let dir = store.layer_dir("snap-0");
        std::fs::create_dir(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/f"), vec![7u8; 64 << 10]).unwrap();
        std::fs::hard_link(dir.join("d/f"), dir.join("g")).unwrap();
        // The daemon's work directory is no part of the snapshot.
        std::fs::create_dir(dir.join(WORK_DIR)).unwrap();
        std::fs::write(dir.join(WORK_DIR).join("x"), vec![1u8; 64 << 10]).unwrap();
        let u = s.usage("a").unwrap();
        assert_eq!(u.inodes, 2, "d and f (g is f)");
        assert!((64 << 10..80 << 10).contains(&u.size), "{u:?}");
        s.commit("c", "a", BTreeMap::new()).unwrap();
        assert_eq!(s.usage("c").unwrap().inodes, 2);
        s.create(Kind::View, "v", "c", BTreeMap::new()).unwrap();
        assert_eq!(s.usage("v").unwrap(), Usage::default());
    }

    #[test]
    fn errors_are_containerds() {
        let (_t, store) = store();
        let mut s = Snapshots::open(&store).unwrap();
        let none = BTreeMap::new;
        assert!(matches!(
            s.create(Kind::Active, "a", "nope", none()),
            Err(Error::NotFound(_))
        ));
        s.create(Kind::Active, "a", "", none()).unwrap();
        assert!(matches!(
            s.create(Kind::View, "a", "", none()),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "b", "a", none()),
            Err(Error::Invalid(_))
        ));
        s.commit("c", "a", none()).unwrap();
        assert!(matches!(s.mounts("c"), Err(Error::Busy(_))));
        s.create(Kind::View, "v", "c", none()).unwrap();
        assert!(matches!(s.commit("d", "v", none()), Err(Error::Busy(_))));
        assert!(matches!(s.remove("c"), Err(Error::Busy(_))));
        assert!(matches!(
            s.update("c", none(), &["parent".into()]),
            Err(Error::Invalid(_))
        ));
        let r = s
            .update("c", labels(&[("x", "1"), ("y", "2")]), &["labels.x".into()])
            .unwrap();
        assert_eq!(r.labels, labels(&[("x", "1")]));
        let m = s.mounts("v").unwrap();
        assert_eq!(m[0].kind, FUSE_TYPE);
        assert!(m[0].options.contains(&"ro".to_string()), "{m:?}");
        s.remove("v").unwrap();
        s.remove("c").unwrap();
        assert!(store.layers().unwrap().is_empty());
    }
}
