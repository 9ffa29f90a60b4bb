//! The webhook served over real TLS on 127.0.0.1:0, called by a real HTTPS
//! client (rustls + hyper, HTTP/1.1 and HTTP/2) with AdmissionReview bodies
//! captured from a real kube-apiserver.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::core::admission::AdmissionReview;
use kube::core::DynamicObject;
use rpf_inject::{pod_patch, InjectConfig, Selection};
use rpf_proto::SIDECAR_CONTAINER;
use rpf_webhook::tls::{self, Material, Validity};
use rpf_webhook::Args;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

const IMAGE: &str = "lab.local/rpf-sidecar:test";

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../inject/tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn opted_in(mut review: Value, value: &str) -> Value {
    review["request"]["object"]["metadata"]["annotations"]["rpf.dev/enabled"] = json!(value);
    review
}

fn names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

struct Webhook {
    addr: SocketAddr,
    ca: String,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), rpf_webhook::Error>>,
}

impl Webhook {
    async fn start() -> Webhook {
        rpf_process::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let m = tls::generate(&names(), Validity::default()).unwrap();
        write_material(dir.path(), &m);
        let args = Args::try_parse_from_for_test(&[
            "--sidecar-image",
            IMAGE,
            "--native-sidecar",
            "never",
            "--tls-cert",
            dir.path().join("tls.crt").to_str().unwrap(),
            "--tls-key",
            dir.path().join("tls.key").to_str().unwrap(),
            "--tls-reload-interval",
            "100ms",
            "--shutdown-delay",
            "0s",
            "--shutdown-timeout",
            "5s",
        ]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(rpf_webhook::run_until(args, listener, async {
            let _ = rx.await;
        }));
        Webhook {
            addr,
            ca: m.ca_cert,
            dir,
            stop: Some(tx),
            task,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> Response {
        call(self.addr, &[&self.ca], Alpn::Http1, method, path, body).await
    }

    async fn mutate(&self, review: &Value) -> (Response, AdmissionReview<DynamicObject>) {
        let r = self
            .call("POST", "/mutate", serde_json::to_vec(review).unwrap())
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let parsed = serde_json::from_slice(&r.body).unwrap();
        (r, parsed)
    }
}

trait ParseForTest {
    fn try_parse_from_for_test(args: &[&str]) -> Args;
}

impl ParseForTest for Args {
    fn try_parse_from_for_test(args: &[&str]) -> Args {
        use clap::Parser;
        Args::try_parse_from(std::iter::once("rpf-webhook").chain(args.iter().copied())).unwrap()
    }
}

fn write_material(dir: &Path, m: &Material) {
    // Write-then-rename, as cert-manager's volume updates are atomic.
    for (name, content) in [("tls.crt", &m.cert), ("tls.key", &m.key)] {
        let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Alpn {
    Http1,
    Http2,
}

struct Response {
    status: u16,
    content_type: String,
    body: Vec<u8>,
    server_cert: CertificateDer<'static>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn tls_connect(
    addr: SocketAddr,
    cas: &[&str],
    alpn: Alpn,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = match alpn {
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::Http2 => vec![b"h2".to_vec()],
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the webhook")
}

async fn call(
    addr: SocketAddr,
    cas: &[&str],
    alpn: Alpn,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Response {
    let stream = tls_connect(addr, cas, alpn).await;
    let server_cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(stream);
    let req = Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = match alpn {
        Alpn::Http1 => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        }
        Alpn::Http2 => {
            assert_eq!(
                negotiated.as_deref(),
                Some(&b"h2"[..]),
                "server must offer h2"
            );
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        }
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Response {
        status,
        content_type,
        body,
        server_cert,
    }
}

fn response_patch(review: &AdmissionReview<DynamicObject>) -> Option<json_patch::Patch> {
    let resp = review.response.as_ref().unwrap();
    resp.patch
        .as_ref()
        .map(|p| serde_json::from_slice(p).unwrap())
}

#[tokio::test]
async fn annotated_pod_gets_the_sidecar_patch() {
    let wh = Webhook::start().await;
    let review = opted_in(fixture("captured-admissionreview.json"), "true");
    let (raw, answer) = wh.mutate(&review).await;
    assert!(raw.content_type.starts_with("application/json"));
    let raw: Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(raw["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(raw["kind"], "AdmissionReview");
    assert_eq!(raw["response"]["uid"], review["request"]["uid"]);
    assert_eq!(raw["response"]["allowed"], true);
    assert_eq!(raw["response"]["patchType"], "JSONPatch");

    // Exactly the library's patch, and it does what it should.
    let patch = response_patch(&answer).expect("a patch");
    let object = &review["request"]["object"];
    let want = pod_patch(object, &InjectConfig::new(IMAGE), Selection::Annotated).unwrap();
    assert_eq!(patch, want.patch);
    let mut pod = object.clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(containers, ["app", SIDECAR_CONTAINER]);
    assert_eq!(
        pod["metadata"]["annotations"]["rpf.dev/injected"],
        rpf_proto::SOFTWARE_VERSION
    );
    // Other annotations survived.
    assert!(pod["metadata"]["annotations"]
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .is_some());

    // A pod created by a ReplicaSet (generateName only), over HTTP/2 as
    // kube-apiserver speaks it.
    let review = opted_in(fixture("captured-admissionreview-replicaset.json"), "true");
    let r = call(
        wh.addr,
        &[&wh.ca],
        Alpn::Http2,
        "POST",
        "/mutate",
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: AdmissionReview<DynamicObject> = serde_json::from_slice(&r.body).unwrap();
    assert!(answer.response.as_ref().unwrap().allowed);
    assert!(response_patch(&answer).is_some());
}

#[tokio::test]
async fn pods_without_opt_in_are_untouched() {
    let wh = Webhook::start().await;
    for name in [
        "captured-admissionreview.json",
        "captured-admissionreview-replicaset.json",
    ] {
        let review = fixture(name);
        let (raw, answer) = wh.mutate(&review).await;
        let resp = answer.response.unwrap();
        assert!(resp.allowed, "{name}");
        assert!(resp.patch.is_none(), "{name}");
        assert!(resp.warnings.is_none(), "{name}");
        assert_eq!(resp.uid, review["request"]["uid"].as_str().unwrap());
        let raw: Value = serde_json::from_slice(&raw.body).unwrap();
        assert!(raw["response"].get("patchType").is_none());
    }
    // Opted out explicitly: same.
    let (_, answer) = wh
        .mutate(&opted_in(fixture("captured-admissionreview.json"), "false"))
        .await;
    assert!(answer.response.unwrap().patch.is_none());
}

#[tokio::test]
async fn garbage_annotation_is_allowed_with_a_warning() {
    let wh = Webhook::start().await;
    let (_, answer) = wh
        .mutate(&opted_in(
            fixture("captured-admissionreview.json"),
            "yes please",
        ))
        .await;
    let resp = answer.response.unwrap();
    assert!(resp.allowed);
    assert!(resp.patch.is_none());
    let warnings = resp.warnings.unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with("rpf: rpf.dev/enabled: \"yes please\""),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_reason() {
    let wh = Webhook::start().await;
    let mut no_request = fixture("captured-admissionreview.json");
    no_request.as_object_mut().unwrap().remove("request");
    let mut v1beta1 = fixture("captured-admissionreview.json");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_uid = fixture("captured-admissionreview.json");
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "not JSON"),
        (b"{\"kind\": \"AdmissionRev".to_vec(), "not JSON"),
        (b"[1, 2, 3]".to_vec(), "not an AdmissionReview"),
        (
            br#"{"kind":"Pod","apiVersion":"v1"}"#.to_vec(),
            "not an AdmissionReview",
        ),
        (
            serde_json::to_vec(&v1beta1).unwrap(),
            "admission.k8s.io/v1beta1",
        ),
        (serde_json::to_vec(&no_request).unwrap(), "has no request"),
        (
            serde_json::to_vec(&no_uid).unwrap(),
            "malformed AdmissionReview",
        ),
        (vec![0xff, 0xfe, 0x00], "not JSON"),
    ];
    for (body, reason) in cases {
        let r = wh.call("POST", "/mutate", body.clone()).await;
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(&body),
            r.text()
        );
        assert!(
            r.text().contains(reason),
            "{:?}: wanted {reason:?} in {:?}",
            String::from_utf8_lossy(&body),
            r.text()
        );
    }
    // Wrong method and unknown path: not 200, not a crash.
    assert_eq!(wh.call("GET", "/mutate", vec![]).await.status, 405);
    assert_eq!(wh.call("GET", "/nope", vec![]).await.status, 404);
    // And the server still works.
    let (_, answer) = wh
        .mutate(&opted_in(fixture("captured-admissionreview.json"), "true"))
        .await;
    assert!(answer.response.unwrap().patch.is_some());
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let wh = Webhook::start().await;
    let r = wh.call("GET", "/healthz", vec![]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = wh.call("GET", "/readyz", vec![]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));

    wh.mutate(&opted_in(fixture("captured-admissionreview.json"), "true"))
        .await;
    wh.mutate(&fixture("captured-admissionreview.json")).await;
    wh.call("POST", "/mutate", b"nope".to_vec()).await;

    let r = wh.call("GET", "/metrics", vec![]).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/openmetrics-text"));
    let text = r.text();
    for needle in [
        "rpf_webhook_injections_total 1",
        "rpf_webhook_skips_total{reason=\"not_annotated\"} 1",
        "rpf_webhook_errors_total{error_type=\"malformed_request\"} 1",
        "rpf_webhook_requests_total{result=\"allowed\"} 2",
        "rpf_webhook_requests_total{result=\"bad_request\"} 1",
        "rpf_webhook_request_duration_seconds_count 3",
        "rpf_webhook_request_duration_seconds_bucket{le=",
        "rpf_webhook_tls_reloads_total{result=\"success\"}",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn rotated_certificate_is_served_to_new_connections() {
    let wh = Webhook::start().await;
    let before = wh.call("GET", "/healthz", vec![]).await.server_cert;

    // Rotate: a new CA and certificate, as cert-manager would write them.
    let next = tls::generate(&names(), Validity::default()).unwrap();
    write_material(wh.dir.path(), &next);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let r = call(
            wh.addr,
            &[&wh.ca, &next.ca_cert],
            Alpn::Http1,
            "GET",
            "/healthz",
            vec![],
        )
        .await;
        if r.server_cert != before {
            break r.server_cert;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    use rustls::pki_types::pem::PemObject;
    assert_eq!(
        after,
        CertificateDer::from_pem_slice(next.cert.as_bytes()).unwrap()
    );
    // A client that trusts only the new CA now gets through.
    assert_eq!(
        call(
            wh.addr,
            &[&next.ca_cert],
            Alpn::Http1,
            "GET",
            "/healthz",
            vec![]
        )
        .await
        .status,
        200
    );

    // A broken write (key of another certificate) keeps the current one.
    let other = tls::generate(&names(), Validity::default()).unwrap();
    std::fs::write(wh.dir.path().join("tls.key"), &other.key).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = call(
        wh.addr,
        &[&next.ca_cert],
        Alpn::Http1,
        "GET",
        "/metrics",
        vec![],
    )
    .await;
    assert_eq!(r.server_cert, after);
    assert!(
        r.text()
            .contains("rpf_webhook_tls_reloads_total{result=\"failure\"} 1"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let mut wh = Webhook::start().await;
    // Start a request whose body arrives slowly.
    let stream = tls_connect(wh.addr, &[&wh.ca], Alpn::Http1).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post(format!("https://localhost:{}/mutate", wh.addr.port()))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let in_flight = tokio::spawn(async move { send.send_request(req).await });
    let json =
        serde_json::to_vec(&opted_in(fixture("captured-admissionreview.json"), "true")).unwrap();
    let (first, rest) = json.split_at(json.len() / 2);
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(first))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // SIGTERM equivalent.
    wh.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The listener is closed for new connections...
    assert!(
        TcpStream::connect(wh.addr).await.is_err(),
        "listener still open after shutdown"
    );
    // ...but the server waits for the request in flight (the process would
    // exit as soon as run returns)...
    assert!(
        !wh.task.is_finished(),
        "server returned with a request in flight"
    );
    // ...which completes.
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(rest))))
        .await
        .unwrap();
    drop(tx);
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: AdmissionReview<DynamicObject> = serde_json::from_slice(&body).unwrap();
    assert!(answer.response.unwrap().patch.is_some());
    // And the server returns cleanly.
    tokio::time::timeout(Duration::from_secs(10), wh.task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

/// An mpsc receiver as a `Stream`.
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
