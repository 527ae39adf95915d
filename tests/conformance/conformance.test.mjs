// The official suite, against CONFORMANCE_TEST_URL. Its own CLI finds no test files
// when installed from npm (upstream issue #284); a test file of one line does.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

runConformanceTests({ baseUrl: process.env.CONFORMANCE_TEST_URL })
