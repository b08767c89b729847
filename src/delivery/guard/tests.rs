//! Tests of `guard`.

use super::*;

#[test]
fn forbidden_ranges_and_their_boundaries() {
    let table: &[(&str, bool)] = &[
        // Public IPv4, including neighbours of forbidden ranges.
        ("8.8.8.8", false),
        ("1.1.1.1", false),
        ("1.0.0.0", false),
        ("9.255.255.255", false),
        ("11.0.0.0", false),
        ("100.63.255.255", false),
        ("100.128.0.0", false),
        ("126.255.255.255", false),
        ("128.0.0.0", false),
        ("169.253.255.255", false),
        ("169.255.0.0", false),
        ("172.15.255.255", false),
        ("172.32.0.0", false),
        ("191.255.255.255", false),
        ("192.0.1.0", false),
        ("192.0.3.0", false),
        ("192.88.98.255", false),
        ("192.167.255.255", false),
        ("192.169.0.0", false),
        ("198.17.255.255", false),
        ("198.20.0.0", false),
        ("198.51.99.255", false),
        ("198.51.101.0", false),
        ("203.0.112.255", false),
        ("203.0.114.0", false),
        ("223.255.255.255", false),
        // Forbidden IPv4, at both ends of each range.
        ("0.0.0.0", true),
        ("0.255.255.255", true),
        ("10.0.0.0", true),
        ("10.255.255.255", true),
        ("100.64.0.0", true),
        ("100.127.255.255", true),
        ("127.0.0.1", true),
        ("127.255.255.255", true),
        ("169.254.0.0", true),
        ("169.254.169.254", true),
        ("169.254.255.255", true),
        ("172.16.0.0", true),
        ("172.31.255.255", true),
        ("192.0.0.0", true),
        ("192.0.0.255", true),
        ("192.0.2.0", true),
        ("192.0.2.255", true),
        ("192.88.99.1", true),
        ("192.168.0.0", true),
        ("192.168.255.255", true),
        ("198.18.0.0", true),
        ("198.19.255.255", true),
        ("198.51.100.0", true),
        ("198.51.100.255", true),
        ("203.0.113.0", true),
        ("203.0.113.255", true),
        ("224.0.0.0", true),
        ("239.255.255.255", true),
        ("240.0.0.0", true),
        ("254.255.255.255", true),
        ("255.255.255.255", true),
        // Public IPv6.
        ("2606:4700::1111", false),
        ("2001:4860:4860::8888", false),
        ("2001:200::1", false),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("2001:db9::", false),
        ("2000::", false),
        ("3ffe:ffff::1", false),
        ("3fff:1000::", false),
        // Forbidden IPv6.
        ("::", true),
        ("::1", true),
        ("fc00::", true),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("fe80::", true),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("fec0::1", true),
        ("ff00::", true),
        ("ff02::1", true),
        ("2001:db8::", true),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("2001::1", true),
        ("2001:1ff:ffff::", true),
        ("3fff::", true),
        ("3fff:fff::", true),
        ("100::", true),
        ("64:ff9b:1::1", true),
        ("1fff:ffff::", true),
        ("4000::", true),
        ("5f00::1", true),
        // IPv6 embedding IPv4, judged by the embedded address.
        ("::ffff:127.0.0.1", true),
        ("::ffff:10.1.2.3", true),
        ("::ffff:169.254.169.254", true),
        ("::ffff:0.0.0.0", true),
        ("::ffff:8.8.8.8", false),
        ("::127.0.0.1", true),
        ("::192.168.1.1", true),
        ("::0.0.0.2", true),
        ("::8.8.8.8", false),
        ("64:ff9b::127.0.0.1", true),
        ("64:ff9b::a00:1", true),
        ("64:ff9b::8.8.8.8", false),
        ("2002:7f00:1::1", true),
        ("2002:c0a8:101::", true),
        ("2002:a9fe:a9fe::1", true),
        ("2002:808:808::1", false),
    ];
    for (text, forbidden) in table {
        let ip: IpAddr = text.parse().expect("the table holds valid addresses");
        assert_eq!(is_forbidden(ip), *forbidden, "{text}");
    }
}

#[test]
fn endpoint_urls_accepted() {
    let cases: &[(&str, bool, bool, bool, &str, u16)] = &[
        // (url, sandbox, require_https, https, host, port)
        (
            "https://hooks.acme.example/preflix",
            false,
            true,
            true,
            "hooks.acme.example",
            443,
        ),
        (
            "https://hooks.acme.example:8443/p?q=1",
            false,
            true,
            true,
            "hooks.acme.example",
            8443,
        ),
        (
            "http://hooks.acme.example/p",
            true,
            true,
            false,
            "hooks.acme.example",
            80,
        ),
        (
            "http://hooks.acme.example:8080/p",
            false,
            false,
            false,
            "hooks.acme.example",
            8080,
        ),
        (
            "HTTPS://Hooks.Acme.Example/",
            false,
            true,
            true,
            "Hooks.Acme.Example",
            443,
        ),
        (
            "https://[2606:4700::1111]/",
            false,
            true,
            true,
            "[2606:4700::1111]",
            443,
        ),
        (
            "https://203.0.113.9:444",
            false,
            true,
            true,
            "203.0.113.9",
            444,
        ),
        ("https://h:65535/", false, true, true, "h", 65535),
        ("https://h:/", false, true, true, "h", 443),
    ];
    for (url, sandbox, require_https, https, host, port) in cases {
        let parsed = parse_endpoint_url(url, *sandbox, *require_https)
            .unwrap_or_else(|e| panic!("{url} refused: {e}"));
        assert_eq!(parsed.scheme_https, *https, "{url}");
        assert_eq!(parsed.host, *host, "{url}");
        assert_eq!(parsed.port, *port, "{url}");
        assert_eq!(parsed.uri, url.parse::<Uri>().expect("uri"), "{url}");
    }
}

#[test]
fn endpoint_urls_refused() {
    let long = format!("https://hooks.acme.example/{}", "a".repeat(MAX_URL_LEN));
    let cases: &[(&str, bool, UrlError)] = &[
        (
            "http://hooks.acme.example/p",
            false,
            UrlError::HttpsRequired,
        ),
        (
            "ftp://hooks.acme.example/p",
            true,
            UrlError::Scheme {
                scheme: "ftp".into(),
            },
        ),
        ("/hooks", true, UrlError::NotAbsolute),
        ("hooks.acme.example", true, UrlError::NotAbsolute),
        (
            "https://user:pass@hooks.acme.example/",
            true,
            UrlError::UserInfo,
        ),
        ("https://user@hooks.acme.example/", true, UrlError::UserInfo),
        (
            "https://hooks.acme.example/p#frag",
            true,
            UrlError::Fragment,
        ),
        ("https://hooks.acme.example/#", true, UrlError::Fragment),
        ("https://:443/p", true, UrlError::MissingHost),
        (&long, true, UrlError::TooLong { len: long.len() }),
    ];
    for (url, sandbox, expected) in cases {
        let got = parse_endpoint_url(url, *sandbox, true).expect_err(url);
        assert_eq!(&got, expected, "{url}");
    }
    for url in [
        "",
        "https://hooks acme/",
        "https://hooks.acme.example:0/",
        "https://h:99999/",
        "https://h:65536/",
        "https://h:+80/",
    ] {
        let got = parse_endpoint_url(url, true, true).expect_err(url);
        assert!(
            matches!(got, UrlError::Invalid { .. } | UrlError::NotAbsolute),
            "{url}: {got:?}"
        );
    }
}

#[test]
fn url_limit_is_inclusive() {
    let base = "https://hooks.acme.example/";
    let exact = format!("{base}{}", "a".repeat(MAX_URL_LEN - base.len()));
    assert_eq!(exact.len(), MAX_URL_LEN);
    assert!(parse_endpoint_url(&exact, false, true).is_ok());
    let over = format!("{exact}a");
    assert_eq!(
        parse_endpoint_url(&over, false, true),
        Err(UrlError::TooLong {
            len: MAX_URL_LEN + 1
        })
    );
}

#[test]
fn https_message_names_the_setting() {
    let err = parse_endpoint_url("http://hooks.acme.example/", false, true)
        .expect_err("http in production");
    assert_eq!(
        err.to_string(),
        "production endpoints must use https; set delivery.require_https = false to allow http"
    );
}

#[tokio::test]
async fn localhost_is_refused_unless_private_networks_are_allowed() {
    let err = check_host("localhost", 80, false)
        .await
        .expect_err("localhost is loopback");
    assert!(
        matches!(
            err,
            GuardError::Forbidden {
                kind: "loopback",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("the host localhost resolves to "),
        "{message}"
    );
    assert!(
        message.ends_with("set delivery.allow_private_networks = true to allow it"),
        "{message}"
    );

    let addrs = check_host("localhost", 80, true).await.expect("allowed");
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
}

#[tokio::test]
async fn ip_literals_are_checked_without_lookup() {
    for host in [
        "127.0.0.1",
        "[::1]",
        "::1",
        "[::ffff:127.0.0.1]",
        "10.0.0.1",
        "[fe80::1]",
    ] {
        let err = check_host(host, 443, false).await.expect_err(host);
        assert!(
            matches!(err, GuardError::Forbidden { .. }),
            "{host}: {err:?}"
        );
        assert!(check_literal(host, false).is_err(), "{host}");
        assert!(check_literal(host, true).is_ok(), "{host}");
    }
    let err = check_host("127.0.0.1", 443, false)
        .await
        .expect_err("loopback");
    assert_eq!(
        err.to_string(),
        "the address 127.0.0.1 is not a public address (loopback); \
         set delivery.allow_private_networks = true to allow it"
    );

    let public = check_host("8.8.8.8", 443, false).await.expect("public");
    assert_eq!(public, vec!["8.8.8.8:443".parse().expect("address")]);
    let v6 = check_host("[2606:4700::1111]", 443, false)
        .await
        .expect("public");
    assert_eq!(v6, vec!["[2606:4700::1111]:443".parse().expect("address")]);
    let private = check_host("[::1]", 8080, true).await.expect("allowed");
    assert_eq!(private, vec!["[::1]:8080".parse().expect("address")]);
    assert!(check_literal("hooks.acme.example", false).is_ok());
}

#[tokio::test]
async fn unresolvable_names_are_their_own_error() {
    let err = check_host("nonexistent.invalid", 443, false)
        .await
        .expect_err(".invalid never resolves");
    assert!(matches!(err, GuardError::Resolve { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("could not resolve the host nonexistent.invalid: "));
}

#[tokio::test]
async fn resolver_refuses_localhost() {
    let name: Name = "localhost".parse().expect("name");
    let err = Service::call(&mut GuardedResolver::new(false), name.clone())
        .await
        .expect_err("loopback");
    assert!(matches!(err, GuardError::Forbidden { .. }), "{err:?}");

    let addrs: Vec<SocketAddr> = Service::call(&mut GuardedResolver::new(true), name)
        .await
        .expect("allowed")
        .collect();
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 0));
}

#[tokio::test]
async fn connector_refuses_literals_and_names() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local address").port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        let uri: Uri = url.parse().expect("uri");
        let err = GuardedConnector::http(false)
            .call(uri)
            .await
            .expect_err(&url);
        let guard = find_guard_error(err.as_ref());
        assert!(
            matches!(guard, Some(GuardError::Forbidden { .. })),
            "{url}: {err:?}"
        );
    }
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        let uri: Uri = url.parse().expect("uri");
        GuardedConnector::http(true).call(uri).await.expect(&url);
    }
}

#[test]
fn connector_fits_the_legacy_client() {
    fn assert_connect<C: hyper_util::client::legacy::connect::Connect + Clone + Sync>() {}
    assert_connect::<GuardedConnector<HttpConnector<GuardedResolver>>>();
}

#[test]
fn malformed_urls_are_refused_whatever_the_network_setting() {
    // Each of these was accepted by the http crate's parser (issue 9).
    for url in [
        "http://[127.0.0.1]/",
        "http://[127.0.0.1]:8080/",
        "http://[fe80::1%25eth0]/",
        "http://[fe80::1%eth0]/",
        "http://hooks.acme.example/caf\u{e9}",
        "http://hooks.acme.example/p?q=\u{e9}",
        "http://h\u{e9}.example/",
        "http://hooks.acme.example/a b",
        "http://hooks.acme.example/a\tb",
        "http://127.1/",
        "http://0x7f.0.0.1/",
        "http://0177.0.0.1/",
        "http://2130706433/",
        "http://127.0.0.1./",
        "http://256.0.0.1/",
        "http://hooks.acme.example:080/",
        "http://hooks..example/",
        "http://-hooks.example/",
        "http://hooks%2eexample/",
        "http://hooks.example/%zz",
        "http://hooks.example/%4",
        "http://hooks.example/a\\b",
        "http://hooks.example/{x}",
        "http://hooks.example/a|b",
        "http://[v1.x]/",
        "http://[::1/",
        "http://[::1]x/",
    ] {
        for sandbox in [true, false] {
            let got = parse_endpoint_url(url, sandbox, false).expect_err(url);
            assert!(matches!(got, UrlError::Invalid { .. }), "{url}: {got:?}");
        }
    }
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://hooks.acme.example./p",
        "http://my_host.internal/p",
        "http://hooks.example/caf%C3%A9?a=1&b=%2F;c=d~e",
        "http://hooks.example/a/b@c:d!$&'()*+,=",
        "http://xn--caf-dma.example/",
        "http://1a.example/",
    ] {
        parse_endpoint_url(url, true, false).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}
