//! The deployment files: docker-compose.yml validates (Debian's
//! docker-compose checks it against the Compose Specification without a
//! Docker engine), with the services, volumes, health checks and start order
//! the stack needs, and every Dockerfile it builds is there.

use billing_e2e::repo_root;
use std::process::Command;

fn compose(args: &[&str], admin_key: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("docker-compose");
    cmd.args(["-f", "docker-compose.yml"])
        .args(args)
        .current_dir(repo_root())
        .env_remove("ADMIN_API_KEY");
    if let Some(k) = admin_key {
        cmd.env("ADMIN_API_KEY", k);
    }
    cmd.output()
        .expect("docker-compose runs (make test installs it: scripts/ensure-deps.sh compose)")
}

fn lines(out: &std::process::Output) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

#[test]
fn compose_file_validates() {
    let checked = compose(&["config", "-q"], Some("test-key"));
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(
        lines(&compose(&["config", "--services"], Some("k"))),
        ["app", "bridge", "kafka", "redis"]
    );
    assert_eq!(
        lines(&compose(&["config", "--volumes"], Some("k"))),
        ["kafka", "redis", "sqlite"]
    );

    let full = compose(&["config"], Some("k"));
    let text = String::from_utf8_lossy(&full.stdout);
    assert_eq!(
        text.matches("healthcheck:").count(),
        4,
        "every service has a health check:\n{text}"
    );
    assert_eq!(
        text.matches("condition: service_healthy").count(),
        4,
        "start order waits for health:\n{text}"
    );
    assert!(
        text.contains("KAFKA_PROCESS_ROLES: broker,controller"),
        "Kafka runs in KRaft mode"
    );

    // Without the admin key it refuses and says which variable is missing.
    let refused = compose(&["config", "-q"], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ADMIN_API_KEY"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    for dockerfile in ["docker/app.Dockerfile", "docker/bridge.Dockerfile"] {
        let text = std::fs::read_to_string(repo_root().join(dockerfile))
            .unwrap_or_else(|e| panic!("{dockerfile}: {e}"));
        assert!(
            text.contains("FROM ") && text.contains("HEALTHCHECK"),
            "{dockerfile}"
        );
    }
}
