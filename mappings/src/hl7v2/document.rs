//! Clinical notes (MDM^T01…T11): the document (TXA) as a DocumentReference whose
//! content is the note's text (OBX-5 lines) in a Binary, or an embedded document
//! (OBX of type ED) as sent.

use super::{at, Helper};
use crate::Translation;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let Some(txa) = m.segment("TXA") else {
        t.warn("TXA", "document message has no TXA segment: no document to map");
        return;
    };
    let doc_id = h.entity(txa, 12, "document");
    let key = format!(
        "{}:TXA:{}",
        h.pid,
        doc_id.as_ref().and_then(|i| i.value.clone()).unwrap_or_else(|| h
            .msg
            .segment("MSH")
            .map(|s| s.field(10).to_string())
            .unwrap_or_default())
    );
    let mut lines = Vec::new();
    let mut attachments = Vec::new();
    for obx in m.segments("OBX") {
        match h.value(obx, 2).as_str() {
            "ED" => {
                // ED: source application ^ type ^ subtype ^ encoding ^ data.
                let p = h.first(obx, 5);
                let (kind, subtype, encoding, data) = (p.get(2), p.get(3), p.get(4), p.get(5));
                if data.is_empty() {
                    t.warn(at(obx, 5), "embedded document without data; not mapped");
                    continue;
                }
                if !encoding.eq_ignore_ascii_case("Base64") {
                    t.warn(at(obx, 5), format!("embedded document encoding `{encoding}` is not Base64; not mapped"));
                    continue;
                }
                attachments.push((media_type(&kind, &subtype), data));
            }
            _ => {
                for rep in m.repetitions(h.field(obx, 5)) {
                    lines.push(m.unescape(rep).trim_end().to_string());
                }
            }
        }
    }
    let mut content = Vec::new();
    let binary_ref = |n: usize| h.ctx.id_for("Binary", &format!("{key}:{n}"));
    let patient = h.patient_ref();
    let mut binaries = Vec::new();
    if !lines.is_empty() {
        let text = lines.join("\n");
        binaries.push(("text/plain; charset=utf-8".to_string(), base64(text.as_bytes())));
    }
    binaries.extend(attachments);
    for (n, (media, data)) in binaries.into_iter().enumerate() {
        let id = binary_ref(n);
        content.push(DocumentReferenceContent {
            attachment: Attachment {
                content_type: Some(media.clone()),
                url: Some(format!("Binary/{id}")),
                creation: h.when(txa, 4, t),
                ..Default::default()
            },
        });
        t.resources.push(Resource::Binary(Binary {
            id: Some(id),
            content_type: media,
            security_context: Some(patient.clone()),
            data: Some(data),
            ..Default::default()
        }));
    }
    if content.is_empty() {
        t.warn("OBX", "document without content (no OBX-5); only its description is mapped");
    }
    // TXA-17 completion status (table 0271) and TXA-19 availability (table 0273).
    let doc_status = match h.value(txa, 17).as_str() {
        "AU" | "LA" | "DO" => Some("final"),
        "IP" | "IN" | "DI" | "PA" => Some("preliminary"),
        "CA" => Some("entered-in-error"),
        _ => None,
    };
    let status = match (h.value(txa, 19).as_str(), h.value(txa, 17).as_str()) {
        ("OB" | "UN", _) => "superseded",
        (_, "CA") => "entered-in-error",
        _ => "current",
    };
    let mut author: Vec<Reference> = h.reps(txa, 9).collect::<Vec<_>>().iter().filter_map(|p| h.person_of(p)).collect();
    author.extend(h.reps(txa, 5).collect::<Vec<_>>().iter().filter_map(|p| h.person_of(p)));
    let authenticator = h.reps(txa, 22).collect::<Vec<_>>().iter().find_map(|p| h.person_of(p));
    let type_ = h.coded(txa, 2, t);
    let mut identifier: Vec<Identifier> = doc_id.into_iter().collect();
    if let Some(parent) = h.entity(txa, 13, "document") {
        identifier.push(Identifier { use_: Some("secondary".into()), ..parent });
    }
    let mut doc = DocumentReference {
        id: Some(h.ctx.id_for("DocumentReference", &key)),
        identifier,
        status: status.into(),
        doc_status: doc_status.map(String::from),
        type_,
        subject: Some(patient),
        date: h.when(txa, 6, t).or_else(|| h.when(txa, 4, t)),
        author,
        authenticator,
        custodian: Some(h.owner_ref()),
        description: Some(h.value(txa, 16)).filter(|s| !s.is_empty()),
        content,
        ..Default::default()
    };
    if doc.author.is_empty() {
        doc.author.push(h.owner_ref());
    }
    t.resources.push(Resource::DocumentReference(doc));
}

/// An ED type and subtype as a media type (`TEXT^RTF` → `text/rtf`, `AP^PDF` →
/// `application/pdf`).
fn media_type(kind: &str, subtype: &str) -> String {
    let top = match kind.to_ascii_uppercase().as_str() {
        "TEXT" | "TX" => "text",
        "IM" | "IMAGE" => "image",
        "AU" | "AUDIO" => "audio",
        "AP" | "APPLICATION" | "" => "application",
        "MULTIPART" => "multipart",
        _ => "application",
    };
    let sub = match subtype.to_ascii_lowercase().as_str() {
        "" | "octet-stream" => "octet-stream".to_string(),
        s => s.to_string(),
    };
    format!("{top}/{sub}")
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads() {
        assert_eq!(super::base64(b"Man"), "TWFu");
        assert_eq!(super::base64(b"Ma"), "TWE=");
        assert_eq!(super::base64(b"M"), "TQ==");
        assert_eq!(super::base64("あ".as_bytes()), "44GC");
    }
}
