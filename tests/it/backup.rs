//! Backups, verification and restore against the real binary: a backup
//! under write load restores exactly the manifest's state, a flipped byte
//! in an SST is found, restore refuses a non-empty target, retention keeps
//! the newest, concurrent backups are refused, archived WAL is replayed,
//! and a database of another on-disk format is refused at start.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cdc(threads: usize) -> Opts {
    Opts::threads(threads).env("THEMIS_FEATURES_CDC", "true")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs a script or the binary; returns (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = output_within(cmd, Duration::from_secs(120));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn restore(backup: &Path, db: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(script("restore.sh"))
        .arg("--backup-path")
        .arg(backup)
        .arg("--db-path")
        .arg(db)
        .args(["--service", "themis-it-no-such-unit", "--themis-bin", BIN])
        .args(extra);
    run(&mut cmd)
}

fn backup(s: &Server, root: &Path) -> Value {
    let body = json!({ "directory": root }).to_string();
    let (status, v) = s.json("POST", "/api/admin/backup", Some(&body));
    assert_eq!(status, 200, "{v}");
    v
}

/// Every event of the feed, following `next_from_seq`.
fn all_events(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (st, p) = s.json(
            "GET",
            &format!("/changefeed?from_seq={after}&limit=1000"),
            None,
        );
        assert_eq!(st, 200, "{p}");
        let events = p["events"].as_array().unwrap().clone();
        let next = p["next_from_seq"].as_u64().unwrap();
        if events.is_empty() && next >= p["latest_sequence"].as_u64().unwrap() {
            return out;
        }
        out.extend(events);
        after = next;
    }
}

fn verify_live(s: &Server) -> Value {
    let (st, v) = s.json("POST", "/api/admin/verify", Some("{}"));
    assert_eq!(st, 200, "{v}");
    v
}

/// Rewrites `file` with one byte flipped at a third of its length, as a new
/// file (a backup's SST is a hard link of the database's: editing it in
/// place would corrupt both).
fn flip_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x5A;
    std::fs::remove_file(file).unwrap();
    std::fs::write(file, bytes).unwrap();
}

fn largest_sst(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("an SST file")
}

/// A value that does not compress away (so files have real size).
fn filler(i: u64, len: usize) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[test]
fn a_backup_under_write_load_restores_exactly_the_manifests_state() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(2));
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"t","columns":["v"]}"#),
    );
    assert!((200..300).contains(&st), "{v}");
    wait_ready(&s);

    // One writer: creates t:i, and every fourth write deletes t:(i-2).
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes, mut c) = (stop.clone(), writes.clone(), s.client());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"v": i % 5, "i": i}).to_string();
                let r = c.request("PUT", &format!("/entities/t:{i}"), Some(&body));
                assert!(r.status == 200 || r.status == 201, "{}", r.status);
                if i % 4 == 3 {
                    let r = c.request("DELETE", &format!("/entities/t:{}", i - 2), None);
                    assert_eq!(r.status, 200);
                }
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(20);
    while writes.load(Ordering::Relaxed) < 300 {
        assert!(Instant::now() < end, "writer too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    let root = dir.path().join("backups");
    let answer = backup(&s, &root);
    let before = writes.load(Ordering::Relaxed);
    while writes.load(Ordering::Relaxed) < before + 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let m = &answer["manifest"];
    let path = PathBuf::from(answer["path"].as_str().unwrap());
    assert!(path.starts_with(&root) && path.join("manifest.json").is_file());
    assert_eq!(m["format_version"], 1);
    assert_eq!(m["backup_type"], "checkpoint");
    assert!(m["checkpoint_size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(m["column_families"].as_array().unwrap().len(), 6);
    assert!(m["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["sha256"].as_str().unwrap().len() == 64));
    let upto = m["changefeed"]["sequence"].as_u64().unwrap();
    let in_flight: Vec<u64> = m["changefeed"]["in_flight"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        in_flight.len() <= 2,
        "at most one write in flight per core: {in_flight:?}"
    );

    let live = all_events(&s);
    assert!(
        live.last().unwrap()["sequence"].as_u64().unwrap() > upto,
        "writes continued after the backup"
    );
    let expected: Vec<Value> = live
        .iter()
        .filter(|e| {
            let q = e["sequence"].as_u64().unwrap();
            q <= upto && !in_flight.contains(&q)
        })
        .cloned()
        .collect();
    assert!(verify_live(&s)["ok"].as_bool().unwrap());

    let dir2 = tempdir();
    let (ok, out, err) = restore(&path, &dir2.path().join("data"), &[]);
    assert!(ok, "{out}\n{err}");
    let r = start_in(dir2.path(), &cdc(2));
    let restored = all_events(&r);
    assert_eq!(
        restored, expected,
        "the restored feed is the live feed up to the manifest's sequence"
    );

    // Entities: each key as its last restored event left it; keys written
    // only after the cut do not exist.
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for e in &restored {
        last.insert(e["key"].as_str().unwrap().to_string(), e.clone());
    }
    for (key, e) in &last {
        let (st, got) = r.json("GET", &format!("/entities/{key}"), None);
        match e["type"].as_str().unwrap() {
            "PUT" => {
                assert_eq!(st, 200, "{key}");
                assert_eq!(got["entity"], e["value"], "{key}");
            }
            _ => assert_eq!(st, 404, "{key}"),
        }
    }
    for e in live
        .iter()
        .filter(|e| e["sequence"].as_u64().unwrap() > upto)
    {
        let key = e["key"].as_str().unwrap();
        if !last.contains_key(key) {
            assert_eq!(
                r.json("GET", &format!("/entities/{key}"), None).0,
                404,
                "{key} is after the cut"
            );
        }
    }
    // Index entries: every entity has its entry and nothing else.
    let report = verify_live(&r);
    assert_eq!(report["ok"], true, "{report}");
    let present = last.values().filter(|e| e["type"] == "PUT").count() as u64;
    assert_eq!(report["entities"], present);
    assert_eq!(report["indexes"][0]["entries"], present);
    let (st, q) = r.json(
        "POST",
        "/query",
        Some(r#"{"table":"t","predicates":[{"column":"v","value":3}],"return":"count"}"#),
    );
    assert_eq!(st, 200, "{q}");
    let want = last
        .values()
        .filter(|e| e["type"] == "PUT" && e["value"]["v"] == 3)
        .count();
    assert_eq!(q["count"].as_u64().unwrap() as usize, want, "{q}");
}

#[test]
fn a_flipped_byte_in_an_sst_is_found_by_verify_and_restore_refuses_it() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    let mut c = s.client();
    for i in 0..1500u64 {
        let body = json!({ "s": filler(i, 300) }).to_string();
        assert_eq!(
            c.request("PUT", &format!("/entities/f:{i}"), Some(&body))
                .status,
            201
        );
    }
    let root = dir.path().join("backups");
    let answer = backup(&s, &root);
    let path = PathBuf::from(answer["path"].as_str().unwrap());
    assert!(s.stop().success());

    let (ok, out, err) = run(command(dir.path()).arg("--verify").arg(&path));
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["database"]["entities"],
        1500
    );

    flip_byte(&largest_sst(&path.join(".rocksdb")));
    let (ok, out, _) = run(command(dir.path()).arg("--verify").arg(&path));
    assert!(!ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["file_problems"][0].as_str().unwrap().contains("SHA-256"),
        "{v}"
    );
    assert_eq!(v["database"]["ok"], false, "{v}");
    let problems = v["database"]["problems"].to_string().to_lowercase();
    assert!(
        problems.contains("corrupt") || problems.contains("checksum"),
        "{v}"
    );

    let target = dir.path().join("restored");
    let (ok, _, err) = restore(&path, &target, &["--verify"]);
    assert!(!ok);
    assert!(err.contains("Backup verification failed"), "{err}");
    assert!(!target.exists(), "nothing restored");

    // The live database: same damage, found by POST /api/admin/verify.
    flip_byte(&largest_sst(&dir.path().join("data")));
    let s = start_in(dir.path(), &Opts::threads(1));
    let report = verify_live(&s);
    assert_eq!(report["ok"], false, "{report}");
    let problems = report["problems"].to_string().to_lowercase();
    assert!(
        problems.contains("corrupt") || problems.contains("checksum"),
        "{report}"
    );
}

#[test]
fn restore_refuses_a_non_empty_target_retention_keeps_the_newest_and_backups_are_serialised() {
    let dir = tempdir();
    let root = dir.path().join("bk");
    let config = dir.path().join("themis.yaml");
    std::fs::write(
        &config,
        format!(
            "backup:\n  root: {}\n  retention_count: 2\n  io_limit_mb_per_s: 1\n",
            root.display()
        ),
    )
    .unwrap();
    let s = start_in(
        dir.path(),
        &Opts::threads(2)
            .arg("--config")
            .arg(config.to_str().unwrap()),
    );
    let mut c = s.client();
    for i in 0..400u64 {
        let body = json!({ "s": filler(i, 1000) }).to_string();
        assert_eq!(
            c.request("PUT", &format!("/entities/r:{i}"), Some(&body))
                .status,
            201
        );
    }

    // Hostile bodies and methods.
    for bad in [
        r#"{"directory":"relative"}"#,
        r#"{"x":1}"#,
        "[",
        r#"{"label":"../x"}"#,
    ] {
        assert_eq!(
            s.json("POST", "/api/admin/backup", Some(bad)).0,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        s.json("POST", "/api/admin/verify", Some(r#"{"time_limit_s":0}"#))
            .0,
        400
    );
    assert_eq!(s.request("GET", "/api/admin/backup", None).status, 405);

    // A second backup while one checksums (paced to 1 MiB/s) gets 409.
    let first = {
        let mut c = s.client();
        std::thread::spawn(move || c.json("POST", "/admin/backup", Some("")))
    };
    std::thread::sleep(Duration::from_millis(150));
    let (st, v) = s.json("POST", "/api/admin/backup", None);
    assert_eq!(st, 409, "{v}");
    let (st, v) = first.join().unwrap();
    assert_eq!(st, 200, "{v}");
    let oldest = PathBuf::from(v["path"].as_str().unwrap());
    let mut made = vec![oldest.clone()];
    for _ in 0..2 {
        let (st, v) = s.json("POST", "/api/admin/backup", Some(r#"{"label":"nightly"}"#));
        assert_eq!(st, 200, "{v}");
        made.push(PathBuf::from(v["path"].as_str().unwrap()));
    }
    let mut left: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    left.sort();
    assert_eq!(left, made[1..].to_vec(), "the newest two are kept");

    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep.txt"), b"x").unwrap();
    let (ok, _, err) = restore(&made[2], &target, &[]);
    assert!(!ok);
    assert!(err.contains("Database path not empty"), "{err}");
    assert!(target.join("keep.txt").exists());
    let (ok, out, err) = restore(&made[2], &target, &["--force", "--verify"]);
    assert!(ok, "{out}\n{err}");
    assert!(target.join("CURRENT").is_file() && !target.join("keep.txt").exists());
}

#[test]
fn restore_with_archived_wal_recovers_writes_after_the_checkpoint() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(1));
    let put = |s: &Server, i: u64| {
        let body = json!({ "i": i }).to_string();
        assert_eq!(
            s.request("PUT", &format!("/entities/w:{i}"), Some(&body))
                .status,
            201
        );
    };
    for i in 0..50 {
        put(&s, i);
    }
    let answer = backup(&s, &dir.path().join("bk"));
    let path = PathBuf::from(answer["path"].as_str().unwrap());
    for i in 50..100 {
        put(&s, i);
    }
    s.kill9();
    // backup-incremental.sh's step 2: the WAL, with a timestamp prefix.
    let archive = path.join("wal_archive");
    std::fs::create_dir_all(&archive).unwrap();
    for e in std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            std::fs::copy(e.path(), archive.join(format!("20260101-000000-{name}"))).unwrap();
        }
    }
    let dir2 = tempdir();
    let (ok, out, err) = restore(&path, &dir2.path().join("data"), &["--with-wal"]);
    assert!(ok, "{out}\n{err}");
    let r = start_in(dir2.path(), &cdc(1));
    for i in 0..100 {
        assert_eq!(
            r.request("GET", &format!("/entities/w:{i}"), None).status,
            200,
            "w:{i}"
        );
    }
    assert_eq!(all_events(&r).len(), 100);
    assert_eq!(verify_live(&r)["ok"], true);

    // Without the WAL, the same backup holds the first 50 only.
    let dir3 = tempdir();
    let (ok, out, err) = restore(&path, &dir3.path().join("data"), &[]);
    assert!(ok, "{out}\n{err}");
    let r3 = start_in(dir3.path(), &cdc(1));
    assert_eq!(r3.request("GET", "/entities/w:49", None).status, 200);
    assert_eq!(r3.request("GET", "/entities/w:50", None).status, 404);
}

#[test]
fn offline_backup_and_other_format_versions_are_refused_at_start() {
    use themis::storage::{format, keyspace::meta, Family, Storage};
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    assert_eq!(s.request("PUT", "/entities/a:1", Some("{}")).status, 201);
    let data = dir.path().join("data");
    // A running database cannot be backed up offline.
    let (ok, _, err) = run(command(dir.path())
        .arg("--db")
        .arg(&data)
        .arg("--backup")
        .arg(dir.path().join("x")));
    assert!(!ok && err.contains("POST /api/admin/backup"), "{err}");
    assert!(s.stop().success());
    let (ok, out, err) = run(command(dir.path())
        .arg("--db")
        .arg(&data)
        .arg("--backup")
        .arg(dir.path().join("off")));
    assert!(ok, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let (ok, out, _) = run(command(dir.path())
        .arg("--verify")
        .arg(v["path"].as_str().unwrap()));
    assert!(ok, "{out}");

    let open = || {
        Storage::open(&themis::config::StorageConfig {
            rocksdb_path: data.clone(),
            ..Default::default()
        })
        .unwrap()
    };
    let start = || {
        run(command(dir.path())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--threads",
                "1",
                "--db",
            ])
            .arg(&data))
    };
    format::write(&open(), format::CURRENT + 1).unwrap();
    let (ok, _, err) = start();
    assert!(!ok);
    assert!(err.contains("newer than this THEMIS"), "{err}");

    {
        let s = open();
        let mut b = s.batch();
        b.delete(Family::Meta, meta::FORMAT_VERSION).unwrap();
        s.commit(b).unwrap();
    }
    let (ok, _, err) = start();
    assert!(!ok);
    assert!(
        err.contains("format version 0") && err.contains("themis-migrate"),
        "{err}"
    );
}

/// The shipped CronJob has the shape the guide and the issue ask for
/// (a YAML schema check: no cluster is available to validate against).
#[test]
fn the_backup_cronjob_and_systemd_units_are_well_formed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("scripts/k8s/backup-cronjob.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let job = docs
        .iter()
        .find(|d| d["kind"] == "CronJob")
        .expect("a CronJob");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(job["spec"]["schedule"], "0 2 * * *");
    let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "no sidecar");
    let c = &containers[0];
    assert_eq!(c["image"], "vccdb/vccdb:latest", "our own image");
    let cmd: Vec<&str> = c["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(cmd.contains(&"/scripts/backup-incremental.sh") && cmd.contains(&"--api-url"));
    let data = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "data")
        .unwrap();
    assert_eq!(data["readOnly"], true);
    for v in pod["volumes"].as_sequence().unwrap() {
        let claim = v["persistentVolumeClaim"]["claimName"].as_str().unwrap();
        assert!(
            docs.iter().any(|d| d["metadata"]["name"] == claim) || claim == "data-vccdb-0",
            "{claim}"
        );
    }
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("/scripts/"),
        "the image ships the scripts the job runs"
    );

    let service =
        std::fs::read_to_string(root.join("scripts/systemd/themisdb-backup.service")).unwrap();
    for key in [
        "Type=oneshot",
        "CPUQuota=50%",
        "MemoryMax=",
        "IOWeight=",
        "backup-incremental.sh",
    ] {
        assert!(service.contains(key), "{key}");
    }
    let timer =
        std::fs::read_to_string(root.join("scripts/systemd/themisdb-backup.timer")).unwrap();
    for key in [
        "OnCalendar=*-*-* 02:00:00",
        "RandomizedDelaySec=",
        "Persistent=true",
    ] {
        assert!(timer.contains(key), "{key}");
    }
    // systemd-analyze, where installed, checks the units themselves (the
    // script path is swapped for one that exists here).
    let dir = tempdir();
    let unit = dir.path().join("themisdb-backup.service");
    std::fs::write(
        &unit,
        service.replace("/opt/themis/scripts/backup-incremental.sh", "/bin/true"),
    )
    .unwrap();
    std::fs::write(dir.path().join("themisdb-backup.timer"), &timer).unwrap();
    if let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .arg(dir.path().join("themisdb-backup.timer"))
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("themisdb-backup"), "{err}");
    }
}

/// A gauge or counter of `/metrics` (0 when absent).
fn metric(s: &Server, name: &str) -> f64 {
    let m = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `recycle_log_file_num` in the database's newest OPTIONS file (the
/// options RocksDB actually runs with).
fn recycle_log_file_num(data: &Path) -> u64 {
    let newest = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("OPTIONS-")
        })
        .max()
        .expect("an OPTIONS file");
    let text = std::fs::read_to_string(newest).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("recycle_log_file_num="))
        .expect("recycle_log_file_num in OPTIONS")
        .parse()
        .unwrap()
}

/// `themis_server --db TARGET --restore BACKUP --wal-archive A [--until U]`.
fn pitr(cwd: &Path, target: &Path, bk: &Path, archive: &Path, until: Option<&str>) -> Value {
    let mut cmd = command(cwd);
    cmd.arg("--db")
        .arg(target)
        .arg("--restore")
        .arg(bk)
        .arg("--wal-archive")
        .arg(archive);
    if let Some(u) = until {
        cmd.args(["--until", u]);
    }
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "{out}\n{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn continuous_wal_archive_restores_acknowledged_writes_and_cuts_at_a_sequence() {
    let dir = tempdir();
    let arch = dir.path().join("wal-archive");
    // Small memtables: the writes below roll and retire WAL files, so the
    // archive is made of closed files and the live one's prefix.
    let opts = cdc(2)
        .env("THEMIS_STORAGE_WAL_ARCHIVE_PATH", arch.to_str().unwrap())
        .env("THEMIS_STORAGE_WAL_ARCHIVE_INTERVAL_S", "1")
        .env("THEMIS_STORAGE_MEMTABLE_SIZE_MB", "1");
    let s = start_in(dir.path(), &opts);
    let put = |s: &Server, i: u64, pad: usize| {
        let body = json!({ "i": i, "pad": filler(i, pad) }).to_string();
        assert_eq!(
            s.request("PUT", &format!("/entities/w:{i}"), Some(&body))
                .status,
            201
        );
    };
    for i in 0..40 {
        put(&s, i, 100);
    }
    let bk = PathBuf::from(backup(&s, &dir.path().join("bk"))["path"].as_str().unwrap());
    for i in 40..160 {
        put(&s, i, 20_000);
    }
    assert_eq!(s.request("DELETE", "/entities/w:3", None).status, 200);
    let events = all_events(&s);
    assert_eq!(events.len(), 161);
    // Wait for a pass that started after the last acknowledged write.
    let acked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&s, "themis_wal_archive_archived_through_seconds") <= acked {
        assert!(Instant::now() < deadline, "no archiving pass");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&s, "themis_wal_archive_bytes_total") > 2e6);
    assert!(
        metric(&s, "themis_wal_archive_files_total") >= 1.0,
        "a retired WAL was archived whole"
    );
    assert_eq!(metric(&s, "themis_wal_archive_gaps_total"), 0.0);
    s.kill9();
    assert_eq!(recycle_log_file_num(&dir.path().join("data")), 0);

    // Latest: everything acknowledged before the pass.
    let d2 = tempdir();
    let r = pitr(d2.path(), &d2.path().join("data"), &bk, &arch, None);
    assert_eq!(r["changefeed_sequence"], events[160]["sequence"], "{r}");
    let s2 = start_in(d2.path(), &cdc(1));
    assert_eq!(all_events(&s2), events);
    for i in 0..160 {
        let want = if i == 3 { 404 } else { 200 };
        assert_eq!(
            s2.request("GET", &format!("/entities/w:{i}"), None).status,
            want,
            "w:{i}"
        );
    }
    assert_eq!(verify_live(&s2)["ok"], true);
    drop(s2);

    // Cut at the event of w:99: exactly the events up to it, nothing after.
    let cut = events[99]["sequence"].as_u64().unwrap();
    let d3 = tempdir();
    let r = pitr(
        d3.path(),
        &d3.path().join("data"),
        &bk,
        &arch,
        Some(&format!("seq:{cut}")),
    );
    assert_eq!(r["changefeed_sequence"], cut, "{r}");
    assert!(r["batches_dropped"].as_u64().unwrap() >= 61, "{r}");
    let s3 = start_in(d3.path(), &cdc(1));
    let got = all_events(&s3);
    let want: Vec<Value> = events
        .iter()
        .filter(|e| e["sequence"].as_u64().unwrap() <= cut)
        .cloned()
        .collect();
    assert_eq!(got, want);
    assert_eq!(s3.request("GET", "/entities/w:99", None).status, 200);
    assert_eq!(s3.request("GET", "/entities/w:100", None).status, 404);
    assert_eq!(s3.request("GET", "/entities/w:3", None).status, 200);
    assert_eq!(verify_live(&s3)["ok"], true);
    drop(s3);

    // Cut at a time, through restore.sh: the events stamped up to it.
    let t = events[120]["timestamp_ms"].as_u64().unwrap();
    let d5 = tempdir();
    let until = format!("ms:{t}");
    let (ok, out, err) = restore(
        &bk,
        &d5.path().join("data"),
        &["--wal-archive", arch.to_str().unwrap(), "--until", &until],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("\"batches_dropped\""), "{out}");
    let s5 = start_in(d5.path(), &cdc(1));
    let want: Vec<Value> = events
        .iter()
        .filter(|e| e["timestamp_ms"].as_u64().unwrap() <= t)
        .cloned()
        .collect();
    assert_eq!(all_events(&s5), want);
    drop(s5);

    // A cut before the backup, bad cuts and a non-empty target are refused.
    let d4 = tempdir();
    let mut cmd = command(d4.path());
    cmd.arg("--db")
        .arg(d4.path().join("data"))
        .arg("--restore")
        .arg(&bk);
    let (ok, _, err) = run(cmd.args(["--until", "seq:1"]));
    assert!(!ok && err.contains("older backup"), "{err}");
    let mut cmd = command(d4.path());
    cmd.arg("--db")
        .arg(d4.path().join("data"))
        .arg("--restore")
        .arg(&bk);
    let (ok, _, err) = run(cmd.args(["--until", "yesterday"]));
    assert!(!ok && err.contains("RFC 3339"), "{err}");
    let mut cmd = command(d4.path());
    let (ok, _, err) = run(cmd
        .arg("--db")
        .arg(d3.path().join("data"))
        .arg("--restore")
        .arg(&bk));
    assert!(!ok && err.contains("not empty"), "{err}");
    // An archive that does not continue the backup (here: empty).
    let other = d4.path().join("other-archive");
    std::fs::create_dir_all(&other).unwrap();
    let mut cmd = command(d4.path());
    cmd.arg("--db")
        .arg(d4.path().join("data"))
        .arg("--restore")
        .arg(&bk);
    let (ok, _, err) = run(cmd.arg("--wal-archive").arg(&other));
    assert!(
        !ok && err.contains("does not continue this backup"),
        "{err}"
    );
}

/// Without archiving, WAL files are recycled only with `sync_writes` (an
/// unchanged file size spares each fdatasync a metadata commit); unsynced,
/// a recycled file's appends would read old blocks back from disk.
#[test]
fn without_archiving_wal_files_are_recycled_only_with_sync_writes() {
    for (sync, want) in [(true, 4), (false, 0)] {
        let dir = tempdir();
        let s = start_in(
            dir.path(),
            &Opts::threads(1).env("THEMIS_STORAGE_SYNC_WRITES", &sync.to_string()),
        );
        assert_eq!(s.request("PUT", "/entities/a:1", Some("{}")).status, 201);
        assert!(s.stop().success());
        assert_eq!(
            recycle_log_file_num(&dir.path().join("data")),
            want,
            "sync_writes: {sync}"
        );
    }
}
