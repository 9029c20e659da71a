//! An S3-compatible store through `aws-sdk-s3`: custom endpoint, path-style addressing,
//! static credentials from the configuration (never logged), SDK retries off for the
//! transfers (the engine retries whole transfers and counts attempts) and on for listing.

use std::time::Duration;

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::store::{Fault, StoreError};
use crate::secret::Secret;

/// Connecting to the server gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request that is not a streaming body (list, head, put of a part) gives up after.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Keys per listing page.
const PAGE: i32 = 1000;

/// One bucket (and prefix) on an S3-compatible server.
#[derive(Clone)]
pub struct S3Store {
    /// For transfers: no SDK retries.
    client: aws_sdk_s3::Client,
    /// For listing and HEAD: the SDK's standard retries.
    listing: aws_sdk_s3::Client,
    endpoint: String,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// A client for `endpoint` (scheme, host, port), `bucket`, `prefix` (empty or ending
    /// in `/`); `stall` bounds the wait for the next bytes of a body.
    pub fn new(
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        region: &str,
        access_key_id: &str,
        secret: &Secret,
        stall: Duration,
    ) -> Self {
        let creds = Credentials::new(access_key_id, secret.expose(), None, None, "duplex");
        let base = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            // duplex verifies SHA-256 itself; not every S3 server knows the newer
            // checksum headers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(stall)
                    .build(),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(stall)
                    .operation_attempt_timeout(OPERATION_TIMEOUT)
                    .build(),
            );
        // Transfers time out stalled bodies themselves (`transfer::Options::stall`, per
        // chunk read) and bound each upload request by the operation timeout; the SDK's
        // own stalled-stream protection would watch every chunk a second time.
        let client = aws_sdk_s3::Client::from_conf(
            base.clone()
                .retry_config(RetryConfig::disabled())
                .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
                .build(),
        );
        let listing = aws_sdk_s3::Client::from_conf(
            base.retry_config(RetryConfig::standard().with_max_attempts(3))
                .build(),
        );
        S3Store {
            client,
            listing,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The object's URL (without credentials).
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, self.full(key))
    }

    /// One page of keys after `token`, relative to the prefix, in the server's (binary)
    /// order: (keys with sizes, next token).
    pub async fn list_page(
        &self,
        token: Option<String>,
    ) -> Result<(Vec<(String, i64)>, Option<String>), StoreError> {
        let out = self
            .listing
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(PAGE)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| classify("listing", &self.prefix, e))?;
        let items = out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?.strip_prefix(&self.prefix)?;
                Some((key.to_string(), o.size().unwrap_or(0)))
            })
            .collect();
        let next = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok((items, next))
    }

    /// Size of `key`, `None` when absent.
    pub async fn head(&self, key: &str) -> Result<Option<i64>, StoreError> {
        match self
            .listing
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0))),
            Err(e) => {
                let err = classify("HEAD", key, e);
                if err.fault == Fault::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Open `key` for reading: its body as a stream, and its size.
    pub async fn get(&self, key: &str) -> Result<(ByteStream, Option<i64>), StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| classify("GET", key, e))?;
        let len = out.content_length();
        Ok((out.body, len))
    }

    /// Delete `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| classify("DELETE", key, e))?;
        Ok(())
    }

    /// Store `body` under `key` in one request. `sha256` is the body's SHA-256 (lowercase
    /// hex), already verified by the caller: it is signed as the payload hash, which the
    /// server checks against the bytes it receives, so the SDK does not hash them again.
    pub async fn put(&self, key: &str, body: Bytes, sha256: &str) -> Result<(), StoreError> {
        let len = body.len() as i64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .content_length(len)
            .body(ByteStream::from(body))
            .customize()
            .interceptor(PayloadHash(sha256.to_string()))
            .send()
            .await
            .map_err(|e| classify("PUT", key, e))?;
        Ok(())
    }

    /// Start a multipart upload of `key`; nothing is visible under it until completed.
    pub async fn start_multipart(&self, key: &str) -> Result<String, StoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| classify("starting a multipart upload of", key, e))?;
        out.upload_id().map(str::to_string).ok_or(StoreError {
            fault: Fault::Transient,
            message: format!("the server started a multipart upload of {key} without an id"),
        })
    }

    /// Upload part `number` (from 1).
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        let len = body.len() as i64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify("uploading a part of", key, e))?;
        Ok(CompletedPart::builder()
            .set_e_tag(out.e_tag().map(str::to_string))
            .part_number(number)
            .build())
    }

    /// Publish a multipart upload: the object appears under `key` now.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), StoreError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("completing the multipart upload of", key, e))?;
        Ok(())
    }

    /// Drop a multipart upload and its parts.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify("aborting the multipart upload of", key, e))?;
        Ok(())
    }

    /// The unfinished multipart uploads under the prefix, every page: (key relative to
    /// the prefix, upload id).
    pub async fn unfinished_uploads(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let out = self
                .listing
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| classify("listing multipart uploads under", &self.prefix, e))?;
            for u in out.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    if let Some(rel) = k.strip_prefix(&self.prefix) {
                        found.push((rel.to_string(), id.to_string()));
                    }
                }
            }
            let next = (
                out.next_key_marker().map(str::to_string),
                out.next_upload_id_marker().map(str::to_string),
            );
            if out.is_truncated() != Some(true)
                || next.0.is_none()
                || next == (key_marker.clone(), id_marker.clone())
            {
                return Ok(found);
            }
            (key_marker, id_marker) = next;
        }
    }
}

/// Signs a request with a payload hash the caller computed (SigV4's
/// `x-amz-content-sha256`) instead of letting the SDK hash the body a second time.
#[derive(Debug)]
struct PayloadHash(String);

impl Intercept for PayloadHash {
    fn name(&self) -> &'static str {
        "duplex::PayloadHash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// Turn an SDK error into a [`StoreError`]: transient (network, timeouts, 5xx, 429)
/// or permanent (404, 403, other 4xx), with a message that names the operation.
fn classify<E>(op: &str, key: &str, e: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (fault, detail) = match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_string();
            let fault = match (status, code.as_str()) {
                (_, "NoSuchBucket") => Fault::NoBucket,
                (404, _) => Fault::NotFound,
                (401 | 403, _) => Fault::Denied,
                (408 | 429, _) | (500..=599, _) => Fault::Transient,
                _ => Fault::Permanent,
            };
            let msg = se.err().message().unwrap_or("").to_string();
            (
                fault,
                format!("HTTP {status} {code} {msg}").trim().to_string(),
            )
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (Fault::Transient, DisplayErrorContext(&e).to_string())
        }
        _ => (Fault::Permanent, DisplayErrorContext(&e).to_string()),
    };
    StoreError {
        fault,
        message: format!("{op} {key}: {detail}"),
    }
}
