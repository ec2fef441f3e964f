package example;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publishes points-adjustment commands with Apache Kafka's client and Apache Avro.
 *
 * <p>{@code -framing single-object} (the default): Avro's own {@link BinaryMessageEncoder}
 * writes C3 01, the schema's 8-byte CRC-64-AVRO fingerprint (little-endian) and the body; no
 * registry. {@code -framing confluent -registry-url URL}: the Confluent wire format written by
 * hand, 00, the 4-byte big-endian schema id the registry gives when the schema is registered
 * under {@code <topic>-value}, then the body (Confluent's own serializer would do the same).
 *
 * <p>Each record is keyed by the account reference: "acct-" and the first 32 hex digits of the
 * SHA-256 of the account number. Prints one idempotency key per command sent.
 */
public final class ProduceCommand {
  private static final Pattern ID = Pattern.compile("\"id\"\\s*:\\s*(\\d+)");

  private ProduceCommand() {}

  public static void main(String[] args) throws Exception {
    Map<String, String> options = options(args);
    String topic = options.getOrDefault("topic", "points-adjustments.requested.v1");
    String account = options.getOrDefault("account", "5500000000000004");
    long points = Long.parseLong(options.getOrDefault("points", "100"));
    int count = Integer.parseInt(options.getOrDefault("count", "1"));
    Schema schema =
        new Schema.Parser()
            .parse(new File(options.getOrDefault("schema", "../../schemas/points_adjustment_requested.avsc")));
    String framing = options.getOrDefault("framing", "single-object");
    Framer framer;
    if (framing.equals("confluent")) {
      String registry = required(options, "registry-url");
      framer = confluent(schema, register(registry, topic + "-value", schema));
    } else if (framing.equals("single-object")) {
      BinaryMessageEncoder<GenericRecord> encoder =
          new BinaryMessageEncoder<>(GenericData.get(), schema);
      framer = record -> toBytes(encoder.encode(record));
    } else {
      throw new IllegalArgumentException("-framing is single-object or confluent, not " + framing);
    }

    Properties config = new Properties();
    config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, required(options, "bootstrap-servers"));
    config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    config.put(ProducerConfig.ACKS_CONFIG, "all");
    try (KafkaProducer<String, byte[]> producer =
        new KafkaProducer<>(config, new StringSerializer(), new ByteArraySerializer())) {
      for (int i = 0; i < count; i++) {
        GenericRecord command = command(schema, account, points);
        String key = accountRef(account);
        producer.send(new ProducerRecord<>(topic, key, framer.frame(command))).get();
        System.out.println(command.get("idempotency_key"));
      }
    }
  }

  /** One command with a fresh idempotency key (reuse the key to retry the same command). */
  static GenericRecord command(Schema schema, String account, long points) {
    GenericRecord command = new GenericData.Record(schema);
    command.put("idempotency_key", "example-java-" + UUID.randomUUID());
    command.put("bank_account_number", account);
    command.put("points_to_adjust", points);
    command.put("adjustment_type_code", "GOODWILL");
    command.put("adjustment_reason", "Apology for a delayed delivery");
    command.put("adjusted_by", "agent-0042");
    command.put("correlation_id", UUID.randomUUID().toString());
    command.put("requested_by", "example-producer-java");
    command.put("occurred_at", System.currentTimeMillis()); // timestamp-millis: a long
    Map<String, String> metadata = new HashMap<>();
    metadata.put("ticket", "CS-1234");
    command.put("metadata", metadata);
    if (schema.getField("channel") != null) { // since v2 of the schema
      command.put("channel", "example");
    }
    return command;
  }

  /** The record key: never the account number itself. */
  static String accountRef(String account) throws NoSuchAlgorithmException {
    byte[] digest =
        MessageDigest.getInstance("SHA-256").digest(account.getBytes(StandardCharsets.UTF_8));
    return "acct-" + HexFormat.of().formatHex(digest).substring(0, 32);
  }

  /** 00, the schema id (4 bytes, big-endian), the Avro body. */
  static Framer confluent(Schema schema, int schemaId) {
    GenericDatumWriter<GenericRecord> writer = new GenericDatumWriter<>(schema);
    return record -> {
      ByteArrayOutputStream out = new ByteArrayOutputStream();
      out.write(0);
      out.write(ByteBuffer.allocate(4).putInt(schemaId).array());
      BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
      writer.write(record, encoder);
      encoder.flush();
      return out.toByteArray();
    };
  }

  /** Registers the schema under the subject (the id of an equal schema when it exists). */
  static int register(String registryUrl, String subject, Schema schema)
      throws IOException, InterruptedException {
    String escaped = schema.toString().replace("\\", "\\\\").replace("\"", "\\\"");
    HttpRequest request =
        HttpRequest.newBuilder(URI.create(registryUrl + "/subjects/" + subject + "/versions"))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .POST(HttpRequest.BodyPublishers.ofString("{\"schema\":\"" + escaped + "\"}"))
            .build();
    HttpResponse<String> response =
        HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString());
    Matcher id = ID.matcher(response.body());
    if (response.statusCode() != 200 || !id.find()) {
      throw new IOException(
          "registering " + subject + ": HTTP " + response.statusCode() + " " + response.body());
    }
    return Integer.parseInt(id.group(1));
  }

  private static byte[] toBytes(ByteBuffer buffer) {
    byte[] bytes = new byte[buffer.remaining()];
    buffer.get(bytes);
    return bytes;
  }

  private static Map<String, String> options(String[] args) {
    Map<String, String> options = new HashMap<>();
    for (int i = 0; i + 1 < args.length; i += 2) {
      if (!args[i].startsWith("-")) {
        throw new IllegalArgumentException("expected -name value, got " + args[i]);
      }
      options.put(args[i].replaceFirst("^-+", ""), args[i + 1]);
    }
    return options;
  }

  private static String required(Map<String, String> options, String name) {
    String value = options.get(name);
    if (value == null) {
      throw new IllegalArgumentException("-" + name + " is required");
    }
    return value;
  }

  @FunctionalInterface
  interface Framer {
    byte[] frame(GenericRecord record) throws IOException;
  }
}
