//! The agent's and the broker's request parsing: any body either fails to
//! parse, is refused by `check`, or is a request whose record every reader
//! can read back (the canonical form decodes to the same request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mintguard_api::{CredentialRequest, IssueRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<CredentialRequest>(data)
        && request.check().is_ok()
    {
        let canonical = mintguard_broker::log::jcs::to_canonical(&request)
            .expect("an accepted request canonicalizes");
        let back: CredentialRequest =
            serde_json::from_str(&canonical).expect("its record decodes");
        assert_eq!(back, request);
    }
    if let Ok(issue) = serde_json::from_slice::<IssueRequest>(data) {
        let accepted = mintguard_api::check_selectors(&issue.selectors).is_ok()
            && issue.request.check().is_ok()
            && issue.node_facts.as_ref().is_none_or(|f| f.check().is_ok());
        if accepted {
            let canonical = mintguard_broker::log::jcs::to_canonical(&issue)
                .expect("an accepted request canonicalizes");
            let back: IssueRequest = serde_json::from_str(&canonical).expect("its record decodes");
            assert_eq!(back, issue);
        }
    }
});
