//! When a put is acknowledged.

/// When a put is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once in the fastest tier with room (possibly memory only).
    #[default]
    Cache,
    /// Once on the SSD tier: survives a kill -9 of the server.
    LocalDisk,
    /// Once on the SSD tier, then flushed to the Blob tier in the background; the node
    /// keeps a local copy until Blob has one (across restarts).
    WriteBack,
}

impl std::str::FromStr for Durability {
    type Err = String;

    /// `cache`, `local_disk` (or `disk`), `write_back`; `Err` says what is accepted.
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "cache" => Ok(Durability::Cache),
            "local_disk" | "disk" => Ok(Durability::LocalDisk),
            "write_back" => Ok(Durability::WriteBack),
            other => Err(format!("durability {other:?}: use \"cache\", \"local_disk\" or \"write_back\"")),
        }
    }
}

impl Durability {
    /// Whether the put is acknowledged only once on SSD.
    pub fn on_disk(self) -> bool {
        matches!(self, Durability::LocalDisk | Durability::WriteBack)
    }

    /// The name used in configuration, the CLI and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Cache => "cache",
            Durability::LocalDisk => "local_disk",
            Durability::WriteBack => "write_back",
        }
    }
}
