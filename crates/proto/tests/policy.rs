//! Postfix's policy protocol: requests read at every cut of the input, the size bound, bad
//! lines, and the answer's form.

use backstop_proto::policy::{Error, MAX_REQUEST, Reader, answer};

const RCPT: &str = "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
client_address=192.0.2.7\nclient_name=unknown\nhelo_name=client.test\nsender=a@client.test\n\
recipient=alice@example.test\nsasl_username=\nfuture_attribute=whatever=with=equals\n\n";

#[test]
fn a_request_is_read_whatever_the_cut_and_unknown_attributes_are_kept_not_judged() {
    for cut in 0..=RCPT.len() {
        let mut r = Reader::new();
        r.push(&RCPT.as_bytes()[..cut]);
        let first = r.next_request();
        r.push(&RCPT.as_bytes()[cut..]);
        let req = match first {
            Some(done) => done,
            None => r.next_request().expect("complete"),
        }
        .unwrap();
        assert_eq!(req.get("protocol_state"), Some("RCPT"), "cut {cut}");
        assert_eq!(req.value("recipient"), "alice@example.test");
        assert_eq!(req.get("sasl_username"), Some(""));
        assert_eq!(req.get("future_attribute"), Some("whatever=with=equals"));
        assert_eq!(req.get("queue_id"), None);
        assert!(r.next_request().is_none());
    }
}

#[test]
fn requests_follow_each_other_on_one_connection_and_crlf_is_tolerated() {
    let mut r = Reader::new();
    let two = format!("{RCPT}{}", RCPT.replace('\n', "\r\n"));
    r.push(two.as_bytes());
    assert!(r.next_request().unwrap().is_ok());
    let second = r.next_request().unwrap().unwrap();
    assert_eq!(second.value("helo_name"), "client.test");
    assert!(r.next_request().is_none());
}

#[test]
fn a_request_over_the_limit_is_refused_once() {
    let mut r = Reader::new();
    r.push(b"request=smtpd_access_policy\nbig=");
    r.push(&vec![b'x'; 1 << 20]);
    assert_eq!(r.next_request(), Some(Err(Error::TooLarge)));
    assert_eq!(r.next_request(), None);
    // just under the limit is fine
    let mut r = Reader::new();
    let value = "y".repeat(MAX_REQUEST - 8);
    r.push(format!("big={value}\n\n").as_bytes());
    assert_eq!(r.next_request().unwrap().unwrap().value("big"), value);
}

#[test]
fn a_line_that_is_not_an_attribute_ends_the_connection() {
    let mut r = Reader::new();
    r.push(b"request=smtpd_access_policy\nGET / HTTP/1.0\n\n");
    let err = r.next_request().unwrap().unwrap_err();
    assert_eq!(err, Error::Malformed("GET / HTTP/1.0".into()));
    assert_eq!(r.next_request(), None);
    let mut r = Reader::new();
    r.push(b"=value\n\n");
    assert!(matches!(r.next_request(), Some(Err(Error::Malformed(_)))));
}

#[test]
fn an_answer_is_one_line_and_the_empty_line() {
    assert_eq!(answer("DUNNO"), b"action=DUNNO\n\n");
    assert_eq!(
        answer("550 5.1.1 <a@example.test>: no\r\nsecond"),
        b"action=550 5.1.1 <a@example.test>: no  second\n\n"
    );
}
