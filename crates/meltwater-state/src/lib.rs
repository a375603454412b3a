//! Keyed state for the streaming runtime (DESIGN.md §5): key groups and checkpoint storage
//! (a local directory or any object store, see [`location`]).
//!
//! Keyed state is partitioned into a fixed number of **key groups** per job (default
//! 128, Flink's "max parallelism"). A key's group is a stable hash of its values modulo
//! that count, and each subtask of a keyed operator owns a contiguous range of groups.
//! Hash exchanges route rows by the same function, so the subtask that receives a key is
//! the one holding its state. A checkpoint stores each row of keyed state with its key
//! group, so it can be restored at another parallelism by filtering on the new ranges.
//! Over a memory budget, operators move cold key groups to local files ([`spill`]).

pub mod keygroup;
pub mod location;
pub mod spill;
pub mod store;

pub use keygroup::{
    key_group_hashes, key_groups, subtask_for_key_group, with_key_groups, KeyGroupRange,
    DEFAULT_KEY_GROUPS, KEY_GROUP_COLUMN,
};
pub use location::{StorageLocation, StorageProfile, StorageProfiles, PROFILE_PREFIX};
pub use spill::KeyGroupSpill;
pub use store::{
    CheckpointManifest, CheckpointStore, OperatorManifest, StateError, SubtaskManifest,
};
