// The GPU check bundles the generation engine, which imports @maas/shared, whose gRPC server module
// loads grpc-health-check; that package reads its .proto file from beside itself at load time, which a
// one-file bundle cannot carry. The check serves no gRPC, so this stands in for it in the bundle only.
exports.protoPath = '';
exports.HealthImplementation = class {
  addToServer() {}
  setStatus() {}
};
