//! Blobs under a local directory: `staging/{uuid}` while an upload streams, then
//! `blobs/sha256/{first two hex}/{sha256}`. Uploads and downloads use direct I/O from
//! aligned blocks where the filesystem allows it.

use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt};

use super::{io_error, key_path};
use crate::{
    domain::ports::{BlobStore, StagedBlob, StoredBlob},
    error::{Error, Missing, Result},
};

/// Blobs under a local directory.
pub struct FsBlobStore {
    root: PathBuf,
    spare: SpareBlocks,
}

impl FsBlobStore {
    pub async fn open(root: &Path) -> Result<Self> {
        for dir in ["staging", "blobs/sha256"] {
            tokio::fs::create_dir_all(root.join(dir))
                .await
                .map_err(|e| io_error("create dir", e))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            spare: SpareBlocks::default(),
        })
    }
}

/// Bytes the disk takes per write; uploads fill one block while the previous one is
/// being written.
const BLOCK: usize = 4 << 20;
/// What direct I/O needs buffers, offsets and lengths aligned to (the page size covers
/// every logical block size in use).
const ALIGN: usize = 4096;
/// Download chunks read ahead of the network, and the size of each disk read (a multiple
/// of `ALIGN`).
const READ_AHEAD_CHUNKS: usize = 16;
const READ_BYTES: usize = 1 << 20;

/// A `BLOCK`-sized buffer aligned for direct I/O.
struct Block {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Result<Self> {
        let buf = vec![0u8; BLOCK + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        if start >= ALIGN {
            return Err(Error::bug("cannot align an upload buffer"));
        }
        Ok(Self { buf, start, len: 0 })
    }

    /// Copies what fits of `data`; how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(BLOCK - self.len);
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn content(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The content, zero-padded to a multiple of `ALIGN` (direct I/O writes whole blocks;
    /// the file is cut back to its length afterwards).
    fn padded(&mut self) -> &[u8] {
        let padded = self.len.div_ceil(ALIGN) * ALIGN;
        self.buf[self.start + self.len..self.start + padded].fill(0);
        &self.buf[self.start..self.start + padded]
    }
}

impl Block {
    /// A placeholder holding no memory.
    fn none() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

/// Upload blocks kept for the next uploads: their pages are already in memory, so a small
/// upload does not fault in 8 MiB of fresh ones.
#[derive(Clone, Default)]
struct SpareBlocks(Arc<std::sync::Mutex<Vec<Block>>>);

const MAX_SPARE_BLOCKS: usize = 4;

impl SpareBlocks {
    fn take(&self) -> Result<Block> {
        let spare = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match spare {
            Some(mut block) => {
                block.len = 0;
                Ok(block)
            }
            None => Block::new(),
        }
    }

    fn give(&self, block: Block) {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !block.buf.is_empty() && spare.len() < MAX_SPARE_BLOCKS {
            spare.push(block);
        }
    }
}

type BlockWrite = tokio::task::JoinHandle<(Block, std::io::Result<()>)>;

/// An upload being written to `staging/`. The file is opened for direct I/O where the
/// filesystem allows it: uploads go from the aligned blocks to the disk, with no copy into
/// the page cache and no dirty pages for writeback to chase (on this kind of machine, 256
/// MiB written and fsynced through the cache took 360 MB/s, direct 1.6 GB/s).
struct FsStaged {
    file: Arc<std::fs::File>,
    path: PathBuf,
    root: PathBuf,
    done: bool,
    block: Block,
    /// The previous block's write, overlapping with filling `block`.
    in_flight: Option<BlockWrite>,
    /// Bytes handed to the disk so far (whole blocks).
    offset: u64,
    spare: SpareBlocks,
}

impl FsStaged {
    fn create(path: PathBuf, root: PathBuf, spare: SpareBlocks) -> Result<Self> {
        // The block first: a file created before a failure here would be left behind.
        let block = spare.take()?;
        let file = open_direct(
            std::fs::OpenOptions::new().write(true).create_new(true),
            &path,
        )
        .map_err(|e| io_error("create", e))?;
        Ok(Self {
            file: Arc::new(file),
            path,
            root,
            done: false,
            block,
            in_flight: None,
            offset: 0,
            spare,
        })
    }

    /// Waits for the write in flight, if any, and returns its emptied block.
    async fn landed(&mut self) -> Result<Option<Block>> {
        let Some(write) = self.in_flight.take() else {
            return Ok(None);
        };
        let (mut block, written) = write
            .await
            .map_err(|e| Error::internal("the blob writer thread", e))?;
        written.map_err(|e| io_error("write", e))?;
        block.len = 0;
        Ok(Some(block))
    }

    /// Sends the full block to the disk and goes on filling the previous one.
    async fn write_block(&mut self) -> Result<()> {
        let next = match self.landed().await? {
            Some(block) => block,
            None => self.spare.take()?,
        };
        let full = std::mem::replace(&mut self.block, next);
        let (file, at) = (self.file.clone(), self.offset);
        self.offset += full.len as u64;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let written = file.write_all_at(full.content(), at);
            (full, written)
        }));
        Ok(())
    }
}

/// Opens with direct I/O where the platform and filesystem allow it, else buffered.
fn open_direct(options: &std::fs::OpenOptions, path: &Path) -> std::io::Result<std::fs::File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match options.clone().custom_flags(libc::O_DIRECT).open(path) {
            // tmpfs and some network filesystems refuse O_DIRECT: go through the cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(error = %e, "no direct I/O for blobs; buffered I/O");
            }
            other => return other,
        }
    }
    options.open(path)
}

/// Reads up to `READ_BYTES` at `offset` (a multiple of `ALIGN`) into an aligned buffer;
/// stops early only at `size`, the blob's length.
fn read_block(file: &std::fs::File, offset: u64, size: u64) -> std::io::Result<Bytes> {
    let want = (size - offset).min(READ_BYTES as u64) as usize;
    // Direct reads ask for whole aligned blocks; the file ends where it ends.
    let ask = want.div_ceil(ALIGN) * ALIGN;
    let mut buf = vec![0u8; ask + ALIGN];
    let start = buf.as_ptr().align_offset(ALIGN);
    if start >= ALIGN {
        return Err(std::io::Error::other("cannot align a download buffer"));
    }
    let mut filled = 0;
    while filled < want {
        let n = file.read_at(
            &mut buf[start + filled..start + ask],
            offset + filled as u64,
        )?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "blob ends at {} bytes, {size} expected",
                    offset + filled as u64
                ),
            ));
        }
        filled += n;
    }
    Ok(Bytes::from(buf).slice(start..start + want))
}

impl Drop for FsStaged {
    fn drop(&mut self) {
        self.spare
            .give(std::mem::replace(&mut self.block, Block::none()));
        if !self.done {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::error!(error = %e, path = %self.path.display(), "cannot remove abandoned staged blob");
            }
        }
    }
}

#[async_trait]
impl StagedBlob for FsStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut data = &chunk[..];
        while !data.is_empty() {
            let n = self.block.fill(data);
            data = &data[n..];
            if self.block.len == BLOCK {
                self.write_block().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, sha256: &str) -> Result<bool> {
        if let Some(landed) = self.landed().await? {
            self.spare.give(landed);
        }
        let mut tail = std::mem::replace(&mut self.block, Block::none());
        let (file, at) = (self.file.clone(), self.offset);
        let (tail, synced) = tokio::task::spawn_blocking(move || {
            let synced = (|| {
                if tail.len > 0 {
                    let len = at + tail.len as u64;
                    file.write_all_at(tail.padded(), at)?;
                    file.set_len(len)?;
                }
                file.sync_all()
            })();
            (tail, synced)
        })
        .await
        .map_err(|e| Error::internal("the blob writer thread", e))?;
        self.spare.give(tail);
        synced.map_err(|e| io_error("write and fsync", e))?;
        let target = self.root.join(key_path(sha256));
        if tokio::fs::try_exists(&target)
            .await
            .map_err(|e| io_error("stat", e))?
        {
            return Ok(true); // Drop removes the staged copy.
        }
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_error("create dir", e))?;
        }
        tokio::fs::rename(&self.path, &target)
            .await
            .map_err(|e| io_error("rename", e))?;
        self.done = true;
        Ok(false)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stage(&self) -> Result<Box<dyn StagedBlob>> {
        let path = self
            .root
            .join("staging")
            .join(uuid::Uuid::new_v4().to_string());
        let (root, spare) = (self.root.clone(), self.spare.clone());
        let staged = tokio::task::spawn_blocking(move || FsStaged::create(path, root, spare))
            .await
            .map_err(|e| Error::internal("the blob writer thread", e))??;
        Ok(Box::new(staged))
    }

    async fn read(&self, sha256: &str, chunk: usize) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = self.root.join(key_path(sha256));
        let opened = tokio::task::spawn_blocking(move || {
            let file = open_direct(std::fs::OpenOptions::new().read(true), &path)?;
            let size = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, size))
        })
        .await;
        let (file, size) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(Missing::Blob(sha256.into())))
            }
            Ok(Err(e)) => return Err(io_error("open", e)),
            Err(e) => return Err(Error::internal("the blob reader thread", e)),
        };
        // A task reads ahead of the network, so that the disk works while earlier chunks
        // are being sent; direct reads land in our buffers without a page-cache copy. Each
        // read borrows a blocking thread only while it reads: a slow client holds none.
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        tokio::spawn(async move {
            let file = Arc::new(file);
            let mut offset = 0;
            while offset < size {
                let f = file.clone();
                let read = tokio::task::spawn_blocking(move || read_block(&f, offset, size)).await;
                let mut block = match read {
                    Ok(Ok(block)) => block,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(io_error("read", e))).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "blob reader thread failed");
                        let e = Error::internal("the blob reader thread", e);
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                offset += block.len() as u64;
                while !block.is_empty() {
                    let piece = block.split_to(chunk.min(block.len()));
                    // A closed channel: the download was cancelled.
                    if tx.send(Ok(piece)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        // The shard directories and their files, read whole and sorted: the collector asks
        // rarely, and a directory read gives no order.
        let dir = self.root.join("blobs/sha256");
        let after = after.unwrap_or_default().to_string();
        let listed = tokio::task::spawn_blocking(move || {
            let mut blobs = Vec::new();
            for shard in std::fs::read_dir(&dir)? {
                for file in std::fs::read_dir(shard?.path())? {
                    let file = file?;
                    let name = file.file_name().to_string_lossy().into_owned();
                    let Some(sha) = super::sha_of_key(&name) else {
                        continue;
                    };
                    if *sha <= *after {
                        continue;
                    }
                    let written = file
                        .metadata()?
                        .modified()?
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64);
                    blobs.push(StoredBlob {
                        sha256: sha.to_string(),
                        written,
                    });
                }
            }
            blobs.sort_by(|a, b| a.sha256.cmp(&b.sha256));
            blobs.truncate(limit);
            Ok::<_, std::io::Error>(blobs)
        })
        .await
        .map_err(|e| Error::internal("the blob lister thread", e))?;
        listed.map_err(|e| io_error("list", e))
    }

    async fn delete(&self, sha256: &str) -> Result<()> {
        match tokio::fs::remove_file(self.root.join(key_path(sha256))).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", e)),
        }
    }

    fn describe(&self) -> String {
        format!("filesystem {}", self.root.display())
    }
}
