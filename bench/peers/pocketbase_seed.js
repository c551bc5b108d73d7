migrate((app) => {
  const fields = [
    { name: "title", type: "text", required: true },
    { name: "body", type: "text" },
  ];
  const pub = new Collection({ type: "base", name: "posts_public", listRule: "", viewRule: "", fields: fields });
  app.save(pub);
  const signed = new Collection({
    type: "base", name: "posts_signed_in",
    listRule: '@request.auth.id != ""', viewRule: '@request.auth.id != ""',
    createRule: '@request.auth.id != ""', updateRule: '@request.auth.id != ""',
    fields: fields,
  });
  app.save(signed);
  const users = app.findCollectionByNameOrId("users");
  const u = new Record(users);
  u.setEmail("bench@example.com");
  u.setPassword("bench-password-1");
  u.setVerified(true);
  app.save(u);
  for (const c of [pub, signed]) {
    for (let i = 1; i <= 10000; i++) {
      const r = new Record(c);
      r.set("title", "post " + i);
      r.set("body", "body of post " + i + " with some words in it");
      app.save(r);
    }
  }
}, (app) => {});
