"""Human review of doubtful leads (CONFLICT_MULTIPLE_CANDIDATES, WEAK_MATCH_ONLY), above identity.

rules (constants, actions, who may review, when a candidate is worth a look), money (what a lead puts at stake),
listing (the review list's query), screen (one lead beside its candidates), display (how a field's
values and the engine's verdict are shown), decide (a reviewer's decision, through identity.linking
and the queue like a recovered lead), groups (the `reviewer` group), views and urls (the screens);
audit (the audit sample of automatic links and its verdicts), audit_screen (the blind audit screen),
quality (estimated precision from the verdicts), undo (a person undoes a wrong link: through
identity.linking, then the queue and the tracking, like a lead never matched), items (the review list and
its decisions for the API, over the same selectors and services).
"""
