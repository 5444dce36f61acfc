//! `s3://bucket/key` locations, read and written through `object_store`.
//!
//! Credentials and region come the standard AWS ways: the `AWS_*`
//! environment variables first (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`), then the shared
//! files' profile (`AWS_PROFILE`, default `default`, in
//! `~/.aws/credentials` and `~/.aws/config`, or `AWS_SHARED_CREDENTIALS_FILE`
//! and `AWS_CONFIG_FILE`), then `object_store`'s own providers (web
//! identity, ECS, EC2 instance metadata). An endpoint override
//! ([`S3Options::endpoint`], else `AWS_ENDPOINT_URL`) serves S3-compatible
//! stores with path-style requests.
//!
//! Every failed request is retried [`S3Options::retries`] times with
//! exponential backoff (100 ms doubling to at most 10 s, with jitter, all
//! within [`S3Options::retry_timeout`]): connection errors, timeouts, 5xx
//! and 429 answers. A 4xx other than 429 is not retried: it will not get
//! better (wrong credentials, a missing bucket or key).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

use crate::error::{IoError, Result};

/// How to reach S3.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Options {
    /// Endpoint of an S3-compatible store, such as `http://127.0.0.1:9000`.
    /// Default: `AWS_ENDPOINT_URL`, else AWS itself.
    pub endpoint: Option<String>,
    /// Retries of a failed request. Default 5.
    pub retries: usize,
    /// No retry starts after this long from a request's first try.
    /// Default 120 s.
    pub retry_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options { endpoint: None, retries: 5, retry_timeout: Duration::from_secs(120) }
    }
}

/// Whether `spec` is an `s3://` (or `s3a://`) URL.
pub fn is_s3(spec: &str) -> bool {
    spec.starts_with("s3://") || spec.starts_with("s3a://")
}

/// A parsed `s3://bucket/key` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key or key prefix, without leading or trailing `/`.
    pub key: String,
}

impl S3Url {
    /// Parses `s3://bucket[/key]`.
    pub fn parse(spec: &str) -> Result<S3Url> {
        let rest = spec.strip_prefix("s3://").or_else(|| spec.strip_prefix("s3a://"));
        let bad = |why: &str| IoError::BadUrl { url: spec.into(), detail: why.into() };
        let rest = rest.ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("it names no bucket"));
        }
        Ok(S3Url { bucket: bucket.into(), key: key.trim_matches('/').into() })
    }

    /// `s3://bucket/key`.
    pub fn url(&self) -> String {
        if self.key.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.key)
        }
    }

    /// The URL of `name` under this prefix.
    pub fn join(&self, name: &str) -> S3Url {
        let key = if self.key.is_empty() { name.to_string() } else { format!("{}/{}", self.key, name) };
        S3Url { bucket: self.bucket.clone(), key }
    }

    fn path(&self) -> ObjectPath {
        ObjectPath::from(self.key.as_str())
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Its URL.
    pub url: S3Url,
    /// Bytes.
    pub size: u64,
}

/// The S3 clients of a job, one per bucket, built on first use.
#[derive(Debug, Default)]
pub struct Stores {
    opts: S3Options,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

/// `[section]` → key → value of an AWS shared file.
fn ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone()).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

/// Keys and region of the shared files' profile, where the environment
/// does not give them.
fn profile(mut b: AmazonS3Builder) -> AmazonS3Builder {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let home = env("HOME").map(PathBuf::from).unwrap_or_default();
    let name = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let read = |var: &str, file: &str| {
        let p = env(var).map(PathBuf::from).unwrap_or_else(|| home.join(".aws").join(file));
        std::fs::read_to_string(p).map(|t| ini(&t)).unwrap_or_default()
    };
    if env("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(s) = read("AWS_SHARED_CREDENTIALS_FILE", "credentials").get(&name) {
            if let (Some(k), Some(v)) = (s.get("aws_access_key_id"), s.get("aws_secret_access_key")) {
                b = b.with_access_key_id(k).with_secret_access_key(v);
                if let Some(t) = s.get("aws_session_token") {
                    b = b.with_token(t);
                }
            }
        }
    }
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        let config = read("AWS_CONFIG_FILE", "config");
        let section = if name == "default" { name.clone() } else { format!("profile {name}") };
        let region = config.get(&section).and_then(|s| s.get("region")).cloned();
        b = b.with_region(region.unwrap_or_else(|| "us-east-1".into()));
    } else if let Some(r) = env("AWS_DEFAULT_REGION").filter(|_| env("AWS_REGION").is_none()) {
        b = b.with_region(r);
    }
    b
}

impl Stores {
    /// Clients that will be built with `opts`.
    pub fn new(opts: S3Options) -> Stores {
        Stores { opts, buckets: Mutex::new(HashMap::new()) }
    }

    /// The options.
    pub fn options(&self) -> &S3Options {
        &self.opts
    }

    /// The client of `bucket`.
    pub fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut map = self.buckets.lock().expect("a client build panicked");
        if let Some(s) = map.get(bucket) {
            return Ok(s.clone());
        }
        let mut b = profile(AmazonS3Builder::from_env()).with_bucket_name(bucket);
        let endpoint = self.opts.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(e) = endpoint.filter(|e| !e.is_empty()) {
            b = b.with_allow_http(e.starts_with("http://")).with_endpoint(e);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                base: 2.0,
            },
            max_retries: self.opts.retries,
            retry_timeout: self.opts.retry_timeout,
        };
        let store: Arc<dyn ObjectStore> = Arc::new(
            b.with_retry(retry)
                .build()
                .map_err(|e| IoError::remote(&format!("s3://{bucket}"), "setting up the S3 client", e))?,
        );
        map.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    /// The objects under `url` (the object itself when it is one), sorted
    /// by key.
    pub async fn list(&self, url: &S3Url) -> Result<Vec<Object>> {
        let store = self.bucket(&url.bucket)?;
        // A key that is an object: one HEAD. Else everything below the prefix.
        if !url.key.is_empty() {
            match store.head(&url.path()).await {
                Ok(meta) => return Ok(vec![Object { url: url.clone(), size: meta.size }]),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(IoError::remote(&url.url(), "looking it up", e)),
            }
        }
        let prefix = (!url.key.is_empty()).then(|| url.path());
        let mut stream = store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| IoError::remote(&url.url(), "listing it", e))?;
            out.push(Object {
                url: S3Url { bucket: url.bucket.clone(), key: meta.location.to_string() },
                size: meta.size,
            });
        }
        out.sort_by(|a, b| a.url.key.cmp(&b.url.key));
        Ok(out)
    }

    /// The first `n` bytes of a local file or an `s3://` object whose
    /// length is `size` (fewer when it is shorter).
    pub async fn read_head(&self, location: &str, size: u64, n: u64) -> Result<Vec<u8>> {
        let end = size.min(n);
        if !is_s3(location) {
            use std::io::Read;
            let mut buf = Vec::with_capacity(end as usize);
            std::fs::File::open(location)
                .and_then(|f| f.take(end).read_to_end(&mut buf))
                .map_err(|e| IoError::io(location, e))?;
            return Ok(buf);
        }
        if end == 0 {
            return Ok(Vec::new());
        }
        let url = S3Url::parse(location)?;
        let store = self.bucket(&url.bucket)?;
        let bytes =
            store.get_range(&url.path(), 0..end).await.map_err(|e| IoError::remote(&url.url(), "reading it", e))?;
        Ok(bytes.to_vec())
    }

    /// Streams the bytes of a local file or an `s3://` object to `sink`,
    /// chunk by chunk; `sink` returns `false` to stop early. `Ok(true)`
    /// when the whole file was read.
    pub async fn read_chunks(&self, location: &str, mut sink: impl FnMut(&[u8]) -> bool) -> Result<bool> {
        if !is_s3(location) {
            use std::io::Read;
            let mut f = std::fs::File::open(location).map_err(|e| IoError::io(location, e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| IoError::io(location, e))?;
                if n == 0 {
                    return Ok(true);
                }
                if !sink(&buf[..n]) {
                    return Ok(false);
                }
            }
        }
        let url = S3Url::parse(location)?;
        let store = self.bucket(&url.bucket)?;
        let got = store.get(&url.path()).await.map_err(|e| IoError::remote(&url.url(), "reading it", e))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| IoError::remote(&url.url(), "reading it", e))?;
            if !sink(&chunk) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Copies an object to a local file (written under a temporary name and
    /// renamed when complete).
    pub async fn download(&self, url: &S3Url, to: &Path) -> Result<()> {
        use std::io::Write;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| IoError::io(dir, e))?;
        }
        let tmp = to.with_extension("part-download");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| IoError::io(&tmp, e))?);
        let mut failed = None;
        self.read_chunks(&url.url(), |c| match file.write_all(c) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        })
        .await
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        if let Some(e) = failed {
            let _ = std::fs::remove_file(&tmp);
            return Err(IoError::io(&tmp, e));
        }
        file.into_inner().map_err(|e| IoError::io(&tmp, e.into_error()))?;
        std::fs::rename(&tmp, to).map_err(|e| IoError::io(to, e))
    }

    /// Uploads a local file. Files over 8 MiB go up in parts; S3 shows an
    /// object only once it is complete, so a failed upload leaves nothing.
    pub async fn upload(&self, from: &Path, url: &S3Url) -> Result<()> {
        use std::io::Read;
        const PART: usize = 8 << 20;
        let store = self.bucket(&url.bucket)?;
        let size = std::fs::metadata(from).map_err(|e| IoError::io(from, e))?.len() as usize;
        let mut file = std::fs::File::open(from).map_err(|e| IoError::io(from, e))?;
        if size <= PART {
            let mut buf = Vec::with_capacity(size);
            file.read_to_end(&mut buf).map_err(|e| IoError::io(from, e))?;
            store
                .put(&url.path(), PutPayload::from(buf))
                .await
                .map_err(|e| IoError::remote(&url.url(), "writing it", e))?;
            return Ok(());
        }
        let upload =
            store.put_multipart(&url.path()).await.map_err(|e| IoError::remote(&url.url(), "starting an upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; PART];
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(IoError::io(from, e));
                }
            };
            if n == 0 {
                break;
            }
            writer.write(&buf[..n]);
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(IoError::remote(&url.url(), "writing it", e));
            }
        }
        writer.finish().await.map_err(|e| IoError::remote(&url.url(), "writing it", e))?;
        Ok(())
    }

    /// Deletes an object (a missing one is not an error).
    pub async fn delete(&self, url: &S3Url) -> Result<()> {
        let store = self.bucket(&url.bucket)?;
        match store.delete(&url.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(IoError::remote(&url.url(), "deleting it", e)),
        }
    }
}

/// Runs `f` to completion on a runtime of its own, for synchronous callers.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::io("<tokio runtime>", e))?;
    Ok(rt.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let u = S3Url::parse("s3://bucket/a/b/").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("bucket", "a/b"));
        assert_eq!(u.join("c.csv").url(), "s3://bucket/a/b/c.csv");
        assert_eq!(S3Url::parse("s3a://b").unwrap().join("x").url(), "s3://b/x");
        let err = S3Url::parse("s3:///key").unwrap_err().to_string();
        assert!(err.contains("s3:///key") && err.contains("no bucket"), "{err}");
        assert!(is_s3("s3://x") && !is_s3("/tmp/s3://x"));
    }

    #[test]
    fn shared_files_parse() {
        let t = "[default]\naws_access_key_id = AK\n# note\naws_secret_access_key=SK\n[profile other]\nregion = eu-west-1\n";
        let m = ini(t);
        assert_eq!(m["default"]["aws_access_key_id"], "AK");
        assert_eq!(m["default"]["aws_secret_access_key"], "SK");
        assert_eq!(m["profile other"]["region"], "eu-west-1");
    }
}
