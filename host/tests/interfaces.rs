//! billing-host against real components (built by this test), real HTTP,
//! real SQLite files and a real redis-server: every host interface and
//! every error variant a component can see.

mod support;

use billing_host::{App, Limits};
use support::*;

const PROBE_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "probe-app"
[variables]
greeting = { default = "hello" }
api_key = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "probe"
[[trigger.http]]
route = "/denied/..."
component = "denied"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["http://self", "redis://127.0.0.1:*", "http://127.0.0.1:1..65535"]
sqlite_databases = ["default", "billing", "mem"]
files = [{ source = "static", destination = "/" }]
environment = { PROBE_ENV = "from-manifest" }
variables = { message = "{{ greeting }}, {{ api_key }}!", plain = "literal" }
[component.denied]
source = "{probe}"
"#;

const PROBE_RC: &str = r#"
[sqlite_database.billing]
type = "spin"
path = "data/billing.db"
[sqlite_database.mem]
type = "spin"
[[config_provider]]
type = "env"
prefix = "PROBE_TEST_VAR"
dotenv_path = ".env"
"#;

async fn probe_app() -> Served {
    let (dir, m, rc) = write_app(PROBE_APP, Some(PROBE_RC));
    std::fs::create_dir_all(dir.path().join("static/sub")).unwrap();
    std::fs::write(dir.path().join("static/sub/a.txt"), "static content").unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PROBE_TEST_VAR_API_KEY=key-from-dotenv\n",
    )
    .unwrap();
    serve_in(dir, &m, rc.as_deref(), Limits::default()).await
}

// Variables: defaults, the env provider (dotenv), templates; invalid names and undefined names give Spin's variants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables() {
    let app = probe_app().await;
    assert_eq!(
        get(&app.url("/var/message")).await.1,
        "ok:hello, key-from-dotenv!"
    );
    assert_eq!(get(&app.url("/var/plain")).await.1, "ok:literal");
    let (_, body) = get(&app.url("/var/greeting")).await;
    assert!(
        body.starts_with("err:undefined:"),
        "app variables are only visible through component variables: {body}"
    );
    let (_, body) = get(&app.url("/var/Not-Valid")).await;
    assert!(
        body.starts_with("err:invalid-name:") && body.contains("invalid character 'N'"),
        "{body}"
    );
    assert!(get(&app.url("/var/a__b"))
        .await
        .1
        .contains("consecutive underscores"));
    assert_eq!(get(&app.url("/env/PROBE_ENV")).await.1, "ok:from-manifest");
}

// A required variable without a value stops start-up and says which variable to set.
#[tokio::test]
async fn required_variable_missing() {
    let (_dir, m, _) = write_app(PROBE_APP, None);
    let err = App::load(&m, None, Limits::default()).err().unwrap();
    assert!(
        format!("{err:#}").contains("SPIN_VARIABLE_API_KEY"),
        "{err:#}"
    );
}

// SQLite v2 and v3: values round-trip exactly, one statement per execute, transactions span executes on one connection, labels map through runtime config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let app = probe_app().await;
    let q = |label: &str, body: serde_json::Value| {
        let url = app.url(&format!("/sqlite/{label}"));
        async move { post(&url, body.to_string()).await.1 }
    };
    assert_eq!(
        q(
            "billing",
            serde_json::json!({"sql": "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)"})
        )
        .await,
        "ok:|"
    );
    let ins = q(
        "billing",
        serde_json::json!({"sql": "INSERT INTO t VALUES (?, ?, ?, ?, ?) RETURNING i, r, s, b, n", "params": [i64::MAX, 1.5, "héllo ✓", [0, 255, 7], null]}),
    )
    .await;
    assert_eq!(
        ins,
        format!("ok:i,r,s,b,n|i{},r1.5,théllo ✓,b[0, 255, 7],null", i64::MAX)
    );
    assert!(
        app.dir.path().join("data/billing.db").exists(),
        "the label maps to the runtime-config path"
    );

    let two = q("billing", serde_json::json!({"sql": "SELECT 1; SELECT 2"})).await;
    assert!(
        two.starts_with("err:io:"),
        "several statements in one execute are refused: {two}"
    );

    let rolled_back = q(
        "billing",
        serde_json::json!({"batch": [{"sql": "BEGIN"}, {"sql": "INSERT INTO t (i) VALUES (42)"}, {"sql": "ROLLBACK"}, {"sql": "SELECT count(*) FROM t"}]}),
    )
    .await;
    assert_eq!(rolled_back, "ok:count(*)|i1");

    let v3 = post(
        &app.url("/sqlite3/billing"),
        serde_json::json!({"sql": "INSERT INTO t (i) VALUES (?)", "params": [9]}).to_string(),
    )
    .await
    .1;
    assert!(v3.ends_with("|rowid=2|changes=1"), "{v3}");

    assert_eq!(
        q("mem", serde_json::json!({"sql": "SELECT 7 AS seven"})).await,
        "ok:seven|i7"
    );
    assert_eq!(
        q("default", serde_json::json!({"sql": "SELECT 'd'"})).await,
        "ok:'d'|td"
    );
    assert!(
        app.dir.path().join(".spin/sqlite_db.db").exists(),
        "`default` without config lives under .spin/"
    );

    assert!(q("other", serde_json::json!({"sql": "SELECT 1"}))
        .await
        .starts_with("err:access-denied"));
    let denied = post(
        &app.url("/denied/sqlite/billing"),
        serde_json::json!({"sql": "SELECT 1"}).to_string(),
    )
    .await
    .1;
    assert!(
        denied.starts_with("err:access-denied"),
        "a component without the label is denied: {denied}"
    );
    assert!(q("billing", serde_json::json!({"sql": "SELEKT"}))
        .await
        .starts_with("err:io:"));
}

// A label a component lists but no runtime config defines stops start-up with Spin's message.
#[tokio::test]
async fn undefined_database_refused() {
    let (_dir, m, _) = write_app(
        &PROBE_APP.replace(
            "api_key = { required = true, secret = true }",
            "api_key = { default = \"k\" }",
        ),
        None,
    );
    let err = format!(
        "{:#}",
        App::load(&m, None, Limits::default()).err().unwrap()
    );
    assert!(
        err.contains("use SQLite databases which are not defined")
            && err.contains("Component probe uses database 'billing'"),
        "{err}"
    );
}

// Redis: every operation against a real server, type errors, the allow-list, and a server that is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let mut redis = Redis::start();
    let app = probe_app().await;
    let url = app.url(&format!("/redis?addr={}", redis.url()));
    let script = "set k v1\nget k\nget missing\nincr n\nincr n\nsadd s a b c\nsrem s b\nsmembers s\npublish ch hi\nexec SET x 5\nexec INCRBY x 10\nexec MGET x k missing\ndel k x n";
    let (_, body) = post(&url, script).await;
    assert_eq!(
        body,
        "ok:OK|v1|nil|1|2|3|1|a,c|published|status:OK|int:15|bin:15,bin:v1,nil|3"
    );

    // As in Spin: a server-side WRONGTYPE is `other`; a reply the client cannot convert (non-UTF-8 set members read as strings) is `type-error`.
    let (_, body) = post(&url, "incr s").await;
    assert!(
        body.starts_with("ok:err:Error::Other(\"WRONGTYPE"),
        "{body}"
    );
    use std::io::Write;
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    raw.write_all(b"*3\r\n$4\r\nSADD\r\n$3\r\nbin\r\n$2\r\n\xff\xfe\r\n")
        .unwrap();
    let mut reply = [0u8; 4];
    std::io::Read::read_exact(&mut raw, &mut reply).unwrap();
    assert_eq!(post(&url, "smembers bin").await.1, "ok:err:type-error");

    assert_eq!(
        get(&app.url(&format!("/redis-many?addr={}", redis.url())))
            .await
            .1,
        "err:too-many-connections:10",
        "ten connections per instance, as in Spin"
    );

    let denied = app.url(&format!("/denied/redis?addr={}", redis.url()));
    assert_eq!(
        post(&denied, "get k").await.1,
        "err:invalid-address:",
        "not in allowed_outbound_hosts"
    );
    let wrong_scheme = app.url("/redis?addr=http://127.0.0.1:80");
    assert_eq!(post(&wrong_scheme, "get k").await.1, "err:invalid-address:");

    // A blocking command gets a connection of its own: another request meanwhile is not held up behind it on the
    // shared one.
    let blocking = tokio::spawn({
        let url = url.clone();
        async move { post(&url, "exec BLPOP nothing-here 20").await }
    });
    // Once the server holds that BLPOP (a guest instantiated, its command sent).
    let mut direct = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut direct)
            .unwrap();
        if info.lines().any(|l| {
            l.strip_prefix("blocked_clients:")
                .is_some_and(|n| n.trim() != "0")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the BLPOP never reached the server"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let t0 = std::time::Instant::now();
    assert_eq!(post(&url, "set k fast\nget k").await.1, "ok:OK|fast");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "held up {:?} behind another guest's 20 s BLPOP",
        t0.elapsed()
    );
    let _: i64 = redis::cmd("RPUSH")
        .arg("nothing-here")
        .arg("done")
        .query(&mut direct)
        .unwrap();
    assert!(
        blocking.await.unwrap().1.contains("done"),
        "the BLPOP got its element"
    );

    // The server goes away. The host shares one connection per address, so the first request after finds it
    // broken at its first command (as a guest of Spin does whose server goes away between `open` and a command);
    // the broken connection is not shared again, and the next `open` fails as in Spin. Both are `other`, not a crash.
    redis.stop();
    let (status, body) = post(&url, "get k").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("err:other:") || body.starts_with("ok:err:Error::Other("),
        "a down server is an `other` error, not a crash: {body}"
    );
    let (status, body) = post(&url, "get k").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("err:other:"),
        "open fails once the server is known down: {body}"
    );

    // Back on the same port: a new connection is made and shared.
    redis.restart();
    assert_eq!(post(&url, "set k again\nget k").await.1, "ok:OK|again");
}

// Outbound HTTP: relative URLs reach the app itself with `http://self`; anything off the allow-list is HttpRequestDenied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http() {
    let app = probe_app().await;
    assert_eq!(
        post(&app.url("/outbound"), "/hello").await.1,
        "ok:200 hello from probe"
    );
    assert_eq!(
        post(&app.url("/outbound"), app.url("/hello")).await.1,
        "ok:200 hello from probe",
        "127.0.0.1 port range allowed"
    );
    let denied = post(
        &app.url("/outbound"),
        "https://api.anthropic.com/v1/messages",
    )
    .await
    .1;
    assert_eq!(denied, "err:send:Http(ErrorCode::HttpRequestDenied)");
    let self_denied = post(&app.url("/denied/outbound"), "/hello").await.1;
    assert_eq!(
        self_denied, "err:send:Http(ErrorCode::HttpRequestDenied)",
        "no `self` in the allow-list"
    );
}

// `files` mounts are readable and read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_only() {
    let app = probe_app().await;
    assert_eq!(
        get(&app.url("/file/sub/a.txt")).await.1,
        "ok:static content"
    );
    let w = get(&app.url("/write-file")).await.1;
    assert!(w.starts_with("err:io:"), "{w}");
    for outside in ["../../etc/passwd", "/etc/passwd", "/sub/../../etc/hostname"] {
        let r = get(&app.url(&format!("/file?path={outside}"))).await.1;
        assert!(
            r.starts_with("err:io:"),
            "no escape from the mount via {outside}: {r}"
        );
    }
}

// A component importing an interface the host lacks is refused at start-up, naming the import.
#[tokio::test]
async fn unknown_import_refused() {
    let (_dir, m, _) = write_app(
        "spin_manifest_version = 2\n[application]\nname = \"kv\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"kv\"\n[component.kv]\nsource = \"{kv}\"\n",
        None,
    );
    let err = format!(
        "{:#}",
        App::load(&m, None, Limits::default()).err().unwrap()
    );
    assert!(
        err.contains("component `kv`") && err.contains("fermyon:spin/key-value"),
        "{err}"
    );
}

// A bad manifest fails at start-up with the file and the field.
#[tokio::test]
async fn bad_manifest() {
    let (_dir, m, _) = write_app(
        &PROBE_APP.replace("allowed_outbound_hosts", "allowed_hosts"),
        None,
    );
    let err = format!(
        "{:#}",
        App::load(&m, None, Limits::default()).err().unwrap()
    );
    assert!(
        err.contains(&m.display().to_string()) && err.contains("unknown field `allowed_hosts`"),
        "{err}"
    );
}

// `billing-host build` runs each component's build command in its workdir, and a failing command is an error.
#[tokio::test]
async fn build_commands() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("w")).unwrap();
    let m = dir.path().join("spin.toml");
    std::fs::write(
        &m,
        "spin_manifest_version = 2\n[application]\nname = \"b\"\n[component.one]\nsource = \"x.wasm\"\n[component.one.build]\ncommand = \"echo built > out.txt\"\nworkdir = \"w\"\n[component.two]\nsource = \"y.wasm\"\n[component.two.build]\ncommand = \"exit 3\"\n",
    )
    .unwrap();
    billing_host::build::build(&m, &["one".into()]).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("w/out.txt"))
            .unwrap()
            .trim(),
        "built"
    );
    let err = billing_host::build::build(&m, &[]).unwrap_err().to_string();
    assert!(err.contains("component `two` failed"), "{err}");
    assert!(billing_host::build::build(&m, &["three".into()]).is_err());
}
