"""Issue 7 journeys 2 and 3 with a third-party FHIR client: fhirclient (SMART on FHIR
client-py, PyPI), given only the federation CA, a client certificate and its key.

Usage: fhirclient_journeys.py '<json arguments>'; prints one JSON object of what it
saw. The Rust end-to-end test (tests/tests/third_party.rs) starts the gateway, passes
the arguments and judges the output.
"""

import json
import sys

from fhirclient import server
from fhirclient.models.bundle import Bundle
from fhirclient.models.condition import Condition
from fhirclient.models.medicationrequest import MedicationRequest
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient


def connect(base, ca, cert, key):
    srv = server.FHIRServer(None, base_uri=base)
    srv.session.verify = ca
    srv.session.cert = (cert, key)
    return srv


def owner(resource):
    for s in (resource.meta.security or []) if resource.meta else []:
        if s.system == "urn:kakehashi:owner-institution":
            return s.code
    return None


def main():
    args = json.loads(sys.argv[1])
    clinic = connect(args["base"], args["ca"], *args["clinic"])
    hub = connect(args["base"], args["ca"], *args["hub"])
    out = {}

    # Journey 2: the clinic terminal searches the patient, then reads the hub's records.
    found = Patient.where(struct={"identifier": args["consented"]}).perform_resources(clinic)
    out["patients"] = sorted([p.id, owner(p)] for p in found)
    hub_patient = next(p for p in found if owner(p) == args["hub_code"])
    for cls in (MedicationRequest, Observation, Condition):
        records = cls.where(struct={"patient": hub_patient.id}).perform_resources(clinic)
        out[cls.resource_type] = {"count": len(records), "owners": sorted({owner(r) for r in records})}
    first = MedicationRequest.where(struct={"patient": hub_patient.id}).perform_resources(clinic)[0]
    out["read"] = MedicationRequest.read(first.id, clinic).id == first.id
    hidden = Patient.where(struct={"identifier": args["not_consented"]}).perform_resources(clinic)
    out["not_consented"] = [owner(p) for p in hidden]

    # Journey 3: the hub pushes a discharge summary (a plain FHIR create of a Bundle).
    with open(args["document"], encoding="utf-8") as f:
        document = Bundle(json.load(f))
    answer = document.create(hub)
    out["push"] = answer.get("resourceType") if isinstance(answer, dict) else None
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
