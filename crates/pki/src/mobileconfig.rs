//! Apple configuration profiles (`.mobileconfig`) that install a device identity on iOS, iPadOS
//! and macOS.
//!
//! The profile is an unsigned XML property list with up to two payloads:
//!
//! - `com.apple.security.pkcs12`: the `.p12`. Its password is deliberately *not* embedded (Apple
//!   only obfuscates profiles, so a profile with the password would be a bearer secret): iOS
//!   asks for it while installing.
//! - `com.apple.security.root` (optional): the edge's local server CA, so Safari can trust the
//!   edge's self-made HTTPS certificate. Installing it does not trust it for TLS yet: the user
//!   must switch it on under Settings › General › About › Certificate Trust Settings. Leave it
//!   out when the edge has a publicly trusted certificate.
//!
//! Identifiers are stable: the profile is `doorless.<site>.<name>`, so installing a renewed
//! profile replaces the old one; payload UUIDs are derived from the device certificate's
//! fingerprint, so the same certificate always yields the same profile.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::identity::{fingerprint, hex};

/// What goes into a profile.
#[derive(Debug, Clone, Copy)]
pub struct MobileConfig<'a> {
    pub site: &'a str,
    /// The device name; also the `.p12`'s friendly name.
    pub name: &'a str,
    /// The device certificate (DER): only its fingerprint is used, for the UUIDs.
    pub cert_der: &'a [u8],
    /// The `.p12` bytes.
    pub p12: &'a [u8],
    /// The edge's local server CA (DER), for a `com.apple.security.root` payload.
    pub server_ca_der: Option<&'a [u8]>,
}

impl MobileConfig<'_> {
    /// The profile as XML.
    pub fn to_xml(&self) -> String {
        let id = format!("doorless.{}.{}", self.site, self.name);
        let fp = fingerprint(self.cert_der);
        let mut payloads = Vec::new();
        payloads.push(payload(&[
            (
                "PayloadCertificateFileName",
                Value::Str(&format!("{}.p12", self.name)),
            ),
            ("PayloadContent", Value::Data(self.p12)),
            (
                "PayloadDescription",
                Value::Str(&format!(
                    "Client certificate of device {} for the doorless site {}",
                    self.name, self.site
                )),
            ),
            (
                "PayloadDisplayName",
                Value::Str(&format!("{} ({})", self.name, self.site)),
            ),
            ("PayloadIdentifier", Value::Str(&format!("{id}.identity"))),
            ("PayloadType", Value::Str("com.apple.security.pkcs12")),
            ("PayloadUUID", Value::Str(&uuid(&fp, "identity"))),
            ("PayloadVersion", Value::Int(1)),
        ]));
        if let Some(ca) = self.server_ca_der {
            payloads.push(payload(&[
                (
                    "PayloadCertificateFileName",
                    Value::Str("doorless-server-ca.cer"),
                ),
                ("PayloadContent", Value::Data(ca)),
                (
                    "PayloadDescription",
                    Value::Str("The doorless edge's local CA for its HTTPS certificates"),
                ),
                ("PayloadDisplayName", Value::Str("doorless server CA")),
                ("PayloadIdentifier", Value::Str(&format!("{id}.server-ca"))),
                ("PayloadType", Value::Str("com.apple.security.root")),
                ("PayloadUUID", Value::Str(&uuid(&fp, "server-ca"))),
                ("PayloadVersion", Value::Int(1)),
            ]));
        }
        let mut out = String::from(concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" ",
            "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
            "<plist version=\"1.0\">\n<dict>\n",
        ));
        out.push_str("\t<key>PayloadContent</key>\n\t<array>\n");
        for p in payloads {
            out.push_str(&p);
        }
        out.push_str("\t</array>\n");
        let description = format!(
            "Installs the client certificate that lets this device open the doorless site {}. \
             The installer asks for the .p12 password.",
            self.site
        );
        for (key, value) in [
            ("PayloadDescription", Value::Str(&description)),
            (
                "PayloadDisplayName",
                Value::Str(&format!("doorless: {} on {}", self.name, self.site)),
            ),
            ("PayloadIdentifier", Value::Str(&id)),
            ("PayloadOrganization", Value::Str("doorless")),
            ("PayloadRemovalDisallowed", Value::Bool(false)),
            ("PayloadType", Value::Str("Configuration")),
            ("PayloadUUID", Value::Str(&uuid(&fp, "profile"))),
            ("PayloadVersion", Value::Int(1)),
        ] {
            entry(&mut out, "\t", key, &value);
        }
        out.push_str("</dict>\n</plist>\n");
        out
    }
}

enum Value<'a> {
    Str(&'a str),
    Data(&'a [u8]),
    Int(i64),
    Bool(bool),
}

fn payload(entries: &[(&str, Value<'_>)]) -> String {
    let mut out = String::from("\t\t<dict>\n");
    for (key, value) in entries {
        entry(&mut out, "\t\t\t", key, value);
    }
    out.push_str("\t\t</dict>\n");
    out
}

fn entry(out: &mut String, indent: &str, key: &str, value: &Value<'_>) {
    out.push_str(&format!("{indent}<key>{}</key>\n", escape(key)));
    let value = match value {
        Value::Str(s) => format!("<string>{}</string>", escape(s)),
        Value::Int(i) => format!("<integer>{i}</integer>"),
        Value::Bool(true) => "<true/>".to_owned(),
        Value::Bool(false) => "<false/>".to_owned(),
        Value::Data(bytes) => {
            // Lines of 52 characters, the way Apple's tools write <data>.
            let b64 = STANDARD.encode(bytes);
            let mut data = String::from("<data>\n");
            for line in b64.as_bytes().chunks(52) {
                data.push_str(indent);
                data.push_str(&String::from_utf8_lossy(line));
                data.push('\n');
            }
            data.push_str(indent);
            data.push_str("</data>");
            data
        }
    };
    out.push_str(indent);
    out.push_str(&value);
    out.push('\n');
}

/// XML text escaping; our strings never hold control characters (names are validated), but a
/// stray `&` or `<` must never break the document.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// A UUID (RFC 9562 version 8, "custom") from SHA-256 of a label and the certificate
/// fingerprint: stable for one certificate, distinct per payload.
fn uuid(fp: &[u8; 32], label: &str) -> String {
    let mut input = b"doorless mobileconfig ".to_vec();
    input.extend_from_slice(label.as_bytes());
    input.push(0);
    input.extend_from_slice(fp);
    let digest = fingerprint(&input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b).to_uppercase();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
