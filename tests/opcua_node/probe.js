"use strict";
// Independent OPC UA client (node-opcua) for the okcell server tests: for each planned session connect, open the
// session, run its actions; print one JSON line per step. Usage: node probe.js '<spec JSON>' (see tests/node_probe.py).
const {
    AttributeIds, DataType, EndpointDescription, MessageSecurityMode, OPCUAClient, SecurityPolicy, TimestampsToReturn,
    UserTokenType, constructEventFilter,
} = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

const spec = JSON.parse(process.argv[2]);
const statusOf = (error) => (String(error && error.message).match(/Bad[A-Za-z]+/) || ["Error"])[0];

async function subscribeResults(session, ns) {
    // subscribed before any trigger, like a PLC: every ResultReady event of the Cell lands in `events`
    const events = [];
    const subscription = await session.createSubscription2({ requestedPublishingInterval: 20, publishingEnabled: true });
    const fields = ["ResultId", "DecisionText", "PartId"];
    const item = await subscription.monitor(
        { nodeId: `ns=${ns};s=Cell`, attributeId: AttributeIds.EventNotifier },
        { samplingInterval: 0, queueSize: 100, filter: constructEventFilter(fields.map((name) => `${ns}:${name}`)) },
        TimestampsToReturn.Neither,
    );
    item.on("changed", (values) => events.push(Object.fromEntries(fields.map((name, i) => [name, values[i].value]))));
    return events;
}

async function waitForResult(events, resultId) {
    for (let waited = 0; waited < 20000; waited += 20) {
        const event = events.find((e) => e.ResultId === resultId);
        if (event) return event;
        await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return null;
}

async function run(session, action, ns, last, events) {
    const node = (name) => `ns=${ns};s=Cell.${name}`;
    if (action.call !== undefined) {
        const result = await session.call({
            objectId: `ns=${ns};s=Cell`, methodId: node(action.call),
            inputArguments: (action.args || []).map((value) => ({ dataType: DataType.String, value })),
        });
        const outputs = (result.outputArguments || []).map((variant) => variant.value);
        return { step: "call", method: action.call, status: result.statusCode.name, outputs };
    }
    if (action.write !== undefined) {
        const status = await session.write({
            nodeId: node(action.write), attributeId: AttributeIds.Value,
            value: { value: { dataType: DataType[action.type], value: action.value } },
        });
        return { step: "write", node: action.write, status: status.name };
    }
    if (action.read !== undefined) {
        const value = await session.read({ nodeId: node(action.read), attributeId: AttributeIds.Value });
        return { step: "read", node: action.read, status: value.statusCode.name, value: value.value.value };
    }
    if (action.result !== undefined) {
        const result = await waitForResult(events, last.outputs[0]);
        return { step: "result", ok: result !== null, status: result === null ? "BadTimeout" : "Good", ...result };
    }
    throw new Error(`unknown action ${JSON.stringify(action)}`);
}

async function probe(emit, clientCertificateManager, plan) {
    const client = OPCUAClient.create({
        applicationName: "okcell-node-probe", applicationUri: spec.application_uri,
        securityMode: MessageSecurityMode[plan.mode], securityPolicy: SecurityPolicy[plan.policy],
        certificateFile: spec.cert, privateKeyFile: spec.key, clientCertificateManager,
        connectionStrategy: { maxRetry: 0 }, keepSessionAlive: false, requestedSessionTimeout: 10000,
    });
    try {
        await client.connect(spec.endpoint);
    } catch (error) {
        return emit({ step: "connect", ok: false, status: statusOf(error), message: error.message });
    }
    emit({ step: "connect", ok: true });
    try {
        const endpoints = await client.getEndpoints();
        emit({ step: "endpoints", offered: endpoints.map((e) => [e.securityPolicyUri.split("#")[1], MessageSecurityMode[e.securityMode]]) });
        // like an attacker's client, ask for a session on this channel even if the server offers no such endpoint
        const forged = new EndpointDescription({ ...endpoints[0], securityMode: MessageSecurityMode[plan.mode], securityPolicyUri: SecurityPolicy[plan.policy] });
        const findEndpoint = client.findEndpoint.bind(client);
        client.findEndpoint = (...args) => findEndpoint(...args) || forged;
        const identity = plan.user === null
            ? { type: UserTokenType.Anonymous }
            : { type: UserTokenType.UserName, userName: plan.user, password: plan.password };
        let session;
        try {
            session = await client.createSession(identity);
        } catch (error) {
            return emit({ step: "session", ok: false, status: statusOf(error), message: error.message });
        }
        emit({ step: "session", ok: true });
        const ns = (await session.readNamespaceArray()).indexOf("urn:okcell:cell");
        const events = plan.actions.some((action) => action.result) ? await subscribeResults(session, ns) : [];
        let last = null;
        for (const action of plan.actions) {
            try {
                const record = await run(session, action, ns, last, events);
                emit(record);
                if (record.step === "call") last = record;
            } catch (error) {
                emit({ step: "error", action, status: statusOf(error), message: error.message });
            }
        }
        await session.close();
    } finally {
        await client.disconnect();
    }
}

async function main() {
    const clientCertificateManager = new OPCUACertificateManager({ rootFolder: spec.pki, automaticallyAcceptUnknownCertificate: true });
    for (const [index, plan] of spec.sessions.entries()) {
        await probe((record) => process.stdout.write(JSON.stringify({ session: index, ...record }) + "\n"), clientCertificateManager, plan);
    }
}

main().then(() => process.exit(0), (error) => {
    process.stdout.write(JSON.stringify({ step: "crash", message: String(error && error.stack) }) + "\n");
    process.exit(1);
});
