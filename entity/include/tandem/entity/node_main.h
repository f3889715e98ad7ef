// NodeMain: the main() of a node executable. An application registers its entity types and
// calls run(), which reads the cluster config, serves until SIGTERM or SIGINT, and shuts down
// cleanly (in-flight commits finish; everything else is durable and resumes on restart).
//
//   int main(int argc, char** argv) {
//     tandem::entity::NodeMain node(argc, argv);
//     node.add<Order>();
//     node.add<Item>();
//     return node.run();
//   }
#pragma once

#include <tandem/entity/entity.h>

namespace tandem::entity {

class NodeMain {
 public:
  // Flags (from argv[first] on): --config FILE --id N [--log-level L] [--max-batch N]
  NodeMain(int argc, char** argv, int first = 1) : argc_(argc), argv_(argv), first_(first) {}
  template <class E>
  void add() {
    registry_.add<E>();
  }
  // Returns the process exit code: 0 after a clean shutdown, 1 when the node cannot start,
  // 2 for bad flags.
  int run();

 private:
  int argc_;
  char** argv_;
  int first_;
  Registry registry_;
};

}  // namespace tandem::entity
