//! `query_param` on any query string and parameter name: a value, `None` or an error, never a
//! panic. Input: the query string, a 0 byte, then the name; both must be UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (query, name) = match data.iter().position(|&byte| byte == 0) {
        Some(zero) => (&data[..zero], &data[zero + 1..]),
        None => (data, &b"username"[..]),
    };
    let (Ok(query), Ok(name)) = (std::str::from_utf8(query), std::str::from_utf8(name)) else {
        return;
    };
    match websocket_handler::query_param(query, name) {
        Ok(Some(value)) => {
            // Decoding never makes a value longer than its encoding.
            assert!(value.len() <= query.len(), "{value:?} from {query:?}");
        }
        Ok(None) if !name.contains(['%', '+']) => {
            // Absent: then no key is the name in clear text (a name without escapes).
            assert!(
                !query
                    .split('&')
                    .any(|pair| pair.split('=').next() == Some(name)),
                "{name:?} is in {query:?}"
            );
        }
        Ok(None) | Err(_) => {}
    }
});
